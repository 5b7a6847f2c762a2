"""The five VRS prompt settings of RobotSeg's test scripts, each as: prompt the start frame, then propagate forward.

- AU: the category alone (`add_new_robot`, RobotSeg only).
- 1C: one click at the GT pixel nearest to the GT centroid.
- 3C: three clicks, the later ones by the center rule, then the best prefix re-added.
- BB: the GT's bounding box.
- OI: 3C, then up to 3 frames corrected with 3 clicks each while tracking.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from robotseg_jax.evaluation import protocols
from robotseg_jax.evaluation.protocols import Clicks
from robotseg_jax.evaluation.session import PredictorSession

SETTINGS = ("AU", "1C", "3C", "BB", "OI")


def predict(session: PredictorSession, setting: str, gt: Mapping[int, np.ndarray], start: int) -> dict[int, np.ndarray]:
    """The masks of one setting, {position: bool [H,W]} in the order propagation yields them (the start frame
    first; frames before it are never predicted). `gt` holds the labelled positions; `start` must be visible."""
    if setting == "OI":
        return protocols.online_interactive(session, gt, start).masks
    if setting == "AU":
        session.add_robot(start)
    elif setting == "1C":
        session.add_clicks(start, Clicks().append(protocols.centroid_click(gt[start]), 1))
    elif setting == "3C":
        protocols.three_click_session(session.add_clicks, start, gt[start])
    elif setting == "BB":
        session.add_box(start, protocols.box_prompt(gt[start]))
    else:
        raise ValueError(f"unknown setting {setting!r}; expected one of {SETTINGS}")
    return dict(session.propagate())
