"""The Flax DINOv3 ViT against Hugging Face transformers' DINOv3ViTModel (random weights, float32), and the
checkpoint mappings: official <-> Flax, official <-> Hugging Face, and their errors."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from robotseg_jax.checkpoints.torch_keys import (
    CheckpointMismatchError,
    flax_path_to_torch_key,
)
from robotseg_jax.teacher import dinov3
from robotseg_jax.teacher import dinov3_checkpoint as ckpt

torch.set_grad_enabled(False)

TINY = dinov3.DinoV3Config(embed_dim=64, depth=2, num_heads=4, ffn_ratio=4.0)
TINY_SWIGLU = dataclasses.replace(TINY, ffn_ratio=6.0, ffn_layer="swiglu")


def hf_model(config: dinov3.DinoV3Config, seed: int = 0) -> DINOv3ViTModel:
    """transformers' DINOv3ViTModel with the architecture of `config`, every weight perturbed by N(0, 0.05) so
    that constant-initialised ones (LayerScale 1, LayerNorm 1/0, biases 0, mask token 0) take part."""
    torch.manual_seed(seed)
    swiglu = config.ffn_layer == "swiglu"
    hf_config = DINOv3ViTConfig(
        hidden_size=config.embed_dim, num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
        intermediate_size=config.ffn_hidden_dim, use_gated_mlp=swiglu, hidden_act="silu" if swiglu else "gelu",
        num_register_tokens=config.n_storage_tokens, patch_size=config.patch_size, rope_theta=config.rope_base,
        layer_norm_eps=config.layer_norm_eps, layerscale_value=1.0,
    )
    model = DINOv3ViTModel(hf_config).eval()
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def flax_tokens(config, params, images_nchw: torch.Tensor, masked=None) -> np.ndarray:
    """[B, 1 + registers + h*w, C] in HF's token order, from the Flax model."""
    apply = jax.jit(lambda p, x, m: dinov3.DinoVisionTransformer(config).apply({"params": p}, x, m))
    out = apply(params, images_nchw.permute(0, 2, 3, 1).numpy(), masked)
    batch = out.patch_tokens.shape[0]
    patches = np.asarray(out.patch_tokens).reshape(batch, -1, config.embed_dim)
    return np.concatenate([np.asarray(out.cls_token)[:, None], np.asarray(out.storage_tokens), patches], axis=1)


@pytest.mark.reference
@pytest.mark.parametrize(
    "variant, depth",
    [("vits16", 2), ("vith16plus", 1)],  # real widths, heads and FFN types (MLP; SwiGLU 5120), reduced depth
)
def test_matches_transformers(variant, depth):
    config = dataclasses.replace(dinov3.VARIANTS[variant], depth=depth)
    model = hf_model(config)
    params = ckpt.official_to_flax(ckpt.hf_to_official(model.state_dict(), config), config)
    images = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(1))  # 3 x 5 patches
    expected = model(pixel_values=images).last_hidden_state.numpy()
    got = flax_tokens(config, params, images)
    diff = float(np.abs(got - expected).max())
    print(f"{variant} depth {depth}: max abs diff {diff:.2e} (max |value| {np.abs(expected).max():.2f})")
    assert diff <= 1e-4


@pytest.mark.reference
def test_masked_patches_match_transformers():
    model = hf_model(TINY_SWIGLU)
    params = ckpt.official_to_flax(ckpt.hf_to_official(model.state_dict(), TINY_SWIGLU), TINY_SWIGLU)
    images = torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(2))
    masked = np.random.default_rng(0).random((2, 2, 4)) < 0.5
    expected = model(pixel_values=images, bool_masked_pos=torch.from_numpy(masked.reshape(2, -1))).last_hidden_state
    assert np.abs(flax_tokens(TINY_SWIGLU, params, images, masked) - expected.numpy()).max() <= 1e-4


@pytest.mark.reference
@pytest.mark.parametrize("config", [TINY, TINY_SWIGLU], ids=["mlp", "swiglu"])
def test_round_trips_official_hf_flax(config):
    model = hf_model(config)
    hf = {k: v.numpy() for k, v in model.state_dict().items()}
    official = ckpt.hf_to_official(hf, config)
    assert official_keys(config) == set(official)

    back_to_hf = ckpt.official_to_hf(official)
    assert set(back_to_hf) == set(hf)
    for key, value in hf.items():
        np.testing.assert_array_equal(back_to_hf[key], value, err_msg=key)

    params = ckpt.official_to_flax(official, config)
    exported = ckpt.flax_to_official(params)
    assert set(exported) == set(official)
    for key in official:
        np.testing.assert_array_equal(exported[key], official[key], err_msg=key)

    hub_layout = {k.removeprefix("model."): v for k, v in hf.items()}  # Hub files predate `model.layer`
    assert set(ckpt.hf_to_official(hub_layout, config)) == set(official)


def official_keys(config: dinov3.DinoV3Config) -> set[str]:
    """The key set of facebookresearch/dinov3's DinoVisionTransformer.state_dict() for `config`."""
    ffn = ("fc1", "fc2") if config.ffn_layer == "mlp" else ("w1", "w2", "w3")
    keys = {"cls_token", "storage_tokens", "mask_token", "rope_embed.periods", "patch_embed.proj.weight",
            "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(config.depth):
        block = [f"norm{n}.{p}" for n in (1, 2) for p in ("weight", "bias")]
        block += ["attn.qkv.weight", "attn.qkv.bias", "attn.qkv.bias_mask", "attn.proj.weight", "attn.proj.bias",
                  "ls1.gamma", "ls2.gamma"] + [f"mlp.{m}.{p}" for m in ffn for p in ("weight", "bias")]
        keys |= {f"blocks.{i}.{k}" for k in block}
    return keys


@pytest.mark.reference
def test_loading_checkpoint_files(tmp_path):
    params = dinov3.random_params(TINY_SWIGLU, seed=3)
    official = ckpt.flax_to_official(params)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in official.items()}, tmp_path / "a.pth")
    from safetensors.numpy import save_file

    save_file(ckpt.official_to_hf(official), str(tmp_path / "model.safetensors"))
    for name in ("a.pth", "model.safetensors"):
        loaded = traverse_util.flatten_dict(ckpt.load_params(str(tmp_path / name), TINY_SWIGLU))
        for path, value in traverse_util.flatten_dict(params).items():
            if name.endswith(".safetensors") and path[-2:] == ("qkv", "bias"):
                value = value * np.repeat([1, 0, 1], 64)  # HF stores no key bias; the model masks it out anyway
            np.testing.assert_array_equal(loaded[path], value, err_msg=f"{name}: {path}")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ckpt.load_params(str(tmp_path / "missing.pth"), TINY_SWIGLU)


def test_missing_unexpected_and_misshaped_keys_are_listed():
    official = ckpt.flax_to_official(dinov3.random_params(TINY))
    broken = dict(official)
    del broken["blocks.1.ls2.gamma"], broken["blocks.0.attn.qkv.bias_mask"]
    broken["blocks.0.attn.extra"] = np.zeros(3, np.float32)
    broken["norm.bias"] = np.zeros(65, np.float32)
    with pytest.raises(CheckpointMismatchError) as error:
        ckpt.official_to_flax(broken, TINY)
    assert error.value.missing == ["blocks.1.ls2.gamma", "blocks.0.attn.qkv.bias_mask"]
    assert error.value.unexpected == ["blocks.0.attn.extra"]
    assert [m[0] for m in error.value.mismatched] == ["norm.bias"]
    for text in ("blocks.1.ls2.gamma", "blocks.0.attn.qkv.bias_mask", "blocks.0.attn.extra", "norm.bias"):
        assert text in str(error.value)

    wrong_mask = dict(official, **{"blocks.1.attn.qkv.bias_mask": np.ones(192, np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"not the key-bias mask.*blocks\.1\.attn\.qkv\.bias_mask"):
        ckpt.official_to_flax(wrong_mask, TINY)

    with pytest.raises(CheckpointMismatchError, match="model.layer.0.attention.bogus"):
        ckpt.hf_to_official({**ckpt.official_to_hf(official), "model.layer.0.attention.bogus": np.zeros(1)}, TINY)

    # The SAT-493M ViT-L's training-only local-crop norm is dropped, not reported.
    ckpt.official_to_flax({**official, "local_cls_norm.weight": np.ones(64), "local_cls_norm.bias": np.zeros(64)},
                          TINY)


def test_architecture_is_read_off_the_state_dict():
    for name, config in dinov3.VARIANTS.items():
        found = ckpt.infer_config(official_shapes(config))
        assert ckpt.describe(found) == ckpt.describe(config) and name in ckpt.describe(found)
    with pytest.raises(ckpt.ArchitectureMismatchError, match=r"that is vits16\b.*that is vits16plus"):
        ckpt.check_architecture(official_shapes(dinov3.VARIANTS["vits16"]), dinov3.VARIANTS["vits16plus"])


def official_shapes(config: dinov3.DinoV3Config) -> dict[str, np.ndarray]:
    """An official state dict with the right key names and shapes but no memory (zero-stride arrays)."""
    out = {}
    for path, leaf in traverse_util.flatten_dict(dinov3.param_shapes(config)).items():
        shape = leaf.shape
        if path[-1] == "kernel":
            shape = shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
        out[flax_path_to_torch_key(path)] = np.broadcast_to(np.float32(0), shape)
    return out
