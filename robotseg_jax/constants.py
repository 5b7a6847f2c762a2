"""Facts shared by the model, the data pipeline, the predictors and the tools, each written once.

Plain Python values with no imports, so that every layer (modeling, data workers that must not import JAX,
CLIs) can read them without pulling anything in.
"""

# Robot categories in class-token order (RobotSeg's `robot_token_embedding` rows: arm=0, gripper=1, robot=2);
# the VRS layout stores each one's masks in the folder of the same index.
ROBOT_CATEGORIES = ("arm", "gripper", "robot")
CATEGORY_FOLDERS = {"arm": "000", "gripper": "001", "robot": "002"}

# The normalisation of every model input (sam2, RobotSeg, DINOv3), as torchvision applies it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# VRS mask folders: ground truth (in real VRS train only the first frame is labelled) and the DINOv3-propagated
# pseudo masks that LET trains on (every train frame).
GT_MASK_DIR = "mask_gt"
PSEUDO_MASK_DIR = "mask_gt_dinov3"

# SAM's point labels: -1 padding, 0 background click, 1 foreground click, 2 / 3 a box's top-left / bottom-right.
PAD_LABEL, NEGATIVE_LABEL, POSITIVE_LABEL = -1, 0, 1
BOX_CORNER_LABELS = (2, 3)
POINT_LABELS = (PAD_LABEL, NEGATIVE_LABEL, POSITIVE_LABEL, *BOX_CORNER_LABELS)

# sam2's predictors clamp low-res logits to this before they are fed back as a mask prompt ("rare numerical
# issues"): the image predictor's returned low-res masks and the video predictor's previous logits.
PROMPT_LOGITS_CLAMP = 32.0
