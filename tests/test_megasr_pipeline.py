"""MegaSR sampling on a tiny random model: seeds, tiles, batching, colour, cancel."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from megasr_tiny import PlainDenoiser, one_thread, randomise_new_modules

from megasr.errors import InvalidParameterError
from megasr.model.engines.base import Cancelled
from megasr.model.megasr import vae as tiled_vae
from megasr.model.megasr.batches import HalvingBatches
from megasr.model.megasr.color_fix import low_frequency
from megasr.model.megasr.config import InferenceConfig
from megasr.model.megasr.csm import CSM, LGWAM
from megasr.model.megasr.msfm import MSFM
from megasr.model.megasr.pipeline import MegaSRPipeline, RestoreInput
from megasr.model.megasr.presets import TINY_VAE, build_tiny_pipeline
from megasr.model.megasr.sampling import ImageRequest, TiledSampler
from megasr.model.megasr.schedulers import make_scheduler
from megasr.model.megasr.tiling import LatentTiling, map_tiled

STEPS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> MegaSRPipeline:
    with one_thread():
        model = build_tiny_pipeline(seed=0).freeze()
        randomise_new_modules(model.denoiser, std=0.1)
        return model


def sampler_of(model: MegaSRPipeline, denoiser=None, **changes) -> TiledSampler:
    """A sampler of ``model`` (or of its parts with another denoiser), ``STEPS`` steps."""
    options = replace(model.inference, steps=STEPS, **changes)
    return TiledSampler(denoiser or model.denoiser, model.vae, model.scheduler_config, options)


@pytest.fixture(scope="module")
def pipeline(model) -> TiledSampler:
    return sampler_of(model)


def sampling(pipeline: TiledSampler, **changes) -> InferenceConfig:
    return replace(pipeline.options, **changes)


@pytest.fixture(scope="module")
def photo(coffee) -> torch.Tensor:
    """A real photo as the bicubic-upscaled LR image, 128 x 192."""
    image = torch.from_numpy(coffee).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(image, size=(128, 192), mode="area")[0]


def request(
    model: MegaSRPipeline,
    lr_up: torch.Tensor,
    seed: int = 1,
    prompt: str = "a cup",
    options: InferenceConfig | None = None,
    **kw,
) -> ImageRequest:
    """The request for an image already at the output size (the bicubic step is a no-op);
    ``options`` None samples with the test pipeline's defaults (``STEPS`` steps)."""
    given = RestoreInput(lr_up, tuple(lr_up.shape[-2:]), prompt=prompt, seed=seed)
    (prepared,) = model.prepare([given])
    return replace(prepared, options=options, **kw)


def test_a_seed_gives_the_same_image_and_another_seed_another(model, pipeline, photo):
    first = pipeline.restore_one(request(model, photo, seed=7))
    again = pipeline.restore_one(request(model, photo, seed=7))
    other = pipeline.restore_one(request(model, photo, seed=8))
    assert first.shape == photo.shape and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 0.05


def test_tiled_sampling_agrees_with_untiled_and_shows_no_seam(model, pipeline, photo):
    """Stated tolerance: mean |tiled - untiled| <= 0.1 (in [0, 1] units) and under a third of
    what another seed changes; no seam: at every tile edge the step between neighbouring
    pixels is at most 1.3 x the image's median step."""
    untiled = pipeline.restore_one(request(model, photo))
    options = sampling(
        pipeline, latent_tile=8, latent_tile_overlap=4, vae_tile=8, vae_tile_overlap=4
    )
    tiled = pipeline.restore_one(request(model, photo, options=options))
    other_seed = pipeline.restore_one(request(model, photo, seed=2))

    difference = (tiled - untiled).abs().mean().item()
    assert difference <= 0.1
    assert difference < (other_seed - untiled).abs().mean().item() / 3

    tiling = LatentTiling.plan(16, 24, 8, 4, options.tile_sigma, 2)
    assert len(tiling) == 15  # the run above really was tiled, 3 x 5
    for axis, starts, side, length in ((2, tiling.xs, 8, 24), (1, tiling.ys, 8, 16)):
        steps = (
            tiled.narrow(axis, 1, tiled.shape[axis] - 1)
            - tiled.narrow(axis, 0, tiled.shape[axis] - 1)
        ).abs()
        profile = steps.mean(dim=tuple(d for d in (0, 1, 2) if d != axis))
        edges = {s * 8 for s in starts if s} | {(s + side) * 8 for s in starts if s + side < length}
        assert max(profile[e - 1] for e in edges) <= 1.3 * profile.median()


def test_tiled_vae_shares_the_whole_image_normalisation(pipeline, photo):
    """With the whole image's GroupNorm statistics every tile is normalised as in one pass
    over the whole image, so tiled encode and decode come much closer to it than tiles
    normalised on their own. A VAE without mid-block attention isolates the normalisation
    (attention is global, and a tile attends within itself either way). Measured: encode
    0.0018 against 0.0054 mean |difference|, decode 0.012 against 0.031; the bound is half
    of the own-statistics figure."""
    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE).eval()  # the tiny VAE has no mid-block attention
    own = sampling(pipeline, vae_tile=16, vae_tile_overlap=8, vae_shared_norm=False)
    shared = replace(own, vae_shared_norm=True)
    batches = HalvingBatches(4, torch.device("cpu"))
    whole = tiled_vae.encode(vae, photo, pipeline.options, batches)
    tiled, tiled_own = (tiled_vae.encode(vae, photo, o, batches) for o in (shared, own))
    assert tiled.shape == whole.shape == (4, 16, 24)
    assert (tiled - whole).abs().mean() < 0.5 * (tiled_own - whole).abs().mean()

    pixels = tiled_vae.decode(vae, whole, pipeline.options, batches)
    decoded, decoded_own = (tiled_vae.decode(vae, whole, o, batches) for o in (shared, own))
    assert decoded.shape == photo.shape
    assert (decoded - pixels).abs().mean() < 0.5 * (decoded_own - pixels).abs().mean()


def test_tiles_blend_back_to_the_exact_input():
    image = torch.rand(3, 40, 56)
    tiling = LatentTiling.plan(40, 56, 16, 6, 0.25)
    assert len(tiling) > 4
    blended = map_tiled(lambda x: x, image, tiling, 1, 1, HalvingBatches(3, image.device))
    assert torch.allclose(blended, image, atol=1e-6)


def test_images_batched_together_come_out_as_each_alone(model, pipeline, photo):
    small = photo[:, :48, :64]
    alone = [
        pipeline.restore_one(request(model, photo, seed=3, prompt="a cup")),
        pipeline.restore_one(request(model, small, seed=4, prompt="coffee")),
        pipeline.restore_one(request(model, photo.flip(-1), seed=5, prompt="")),
    ]
    batched = pipeline.restore(
        [
            request(model, photo, seed=3, prompt="a cup"),
            request(model, small, seed=4, prompt="coffee"),
            request(model, photo.flip(-1), seed=5, prompt=""),
        ],
        batch_size=8,
    )
    for one, many in zip(alone, batched, strict=True):
        torch.testing.assert_close(many, one, atol=1e-4, rtol=0)


def test_images_with_their_own_sampling_options_share_forward_passes(model, pipeline, photo):
    """Steps, guidance scale and colour fix are each image's own: images that differ in them
    still share forward passes at every step, and each comes out as it does alone."""
    own = [
        sampling(pipeline, steps=2, color_fix="wavelet"),
        sampling(pipeline, steps=4, guidance_scale=3.0),
        sampling(pipeline, steps=3, guidance_scale=1.0, latent_tile=8, latent_tile_overlap=4),
    ]
    images = [photo, photo.flip(-1), photo[:, :64, :96]]  # the last: 2 latent tiles of 8

    def requests():
        return [
            request(model, image, seed=i, options=o)
            for i, (image, o) in enumerate(zip(images, own, strict=True))
        ]

    passes: list[int] = []
    together = pipeline.restore(requests(), batch_size=8, on_batch=passes.append)
    alone = [pipeline.restore_one(one) for one in requests()]
    for one, many in zip(alone, together, strict=True):
        torch.testing.assert_close(many, one, atol=1e-4, rtol=0)
    # Steps 1 and 2: the two guided images share one pass (a tile each), the unguided one
    # runs its two tiles apart; step 3: the first image is done; step 4: the second alone.
    assert passes == [2, 2, 2, 2, 1, 2, 1]


def test_odd_sizes_are_padded_inside_and_cropped_back(model, pipeline, photo):
    odd = photo[:, :37, :53]
    out = pipeline.restore_one(request(model, odd))
    assert out.shape == (3, 37, 53)


def test_colour_fix_keeps_the_low_frequency_colour_of_the_lr_image(model, pipeline, photo):
    def run(method: str) -> torch.Tensor:
        return pipeline.restore_one(
            request(model, photo, options=sampling(pipeline, color_fix=method))
        )

    none, adain, wavelet = run("none"), run("adain"), run("wavelet")
    lr_mean = photo.mean(dim=(1, 2))
    assert (none.mean(dim=(1, 2)) - lr_mean).abs().max() > 0.05  # the raw output drifted
    assert (adain.mean(dim=(1, 2)) - lr_mean).abs().max() < 0.02

    def low(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(low_frequency(x[None]), 8)

    assert (low(none) - low(photo)).abs().mean() > 0.1
    assert (low(wavelet) - low(photo)).abs().mean() < 0.03


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
def test_other_samplers_are_selectable(model, pipeline, photo, sampler):
    out = pipeline.restore_one(request(model, photo, options=sampling(pipeline, sampler=sampler)))
    ddpm = pipeline.restore_one(request(model, photo))
    assert out.shape == photo.shape and torch.isfinite(out).all()
    assert (out - ddpm).abs().mean() > 1e-3


def test_progress_is_reported_every_step(model, pipeline, photo):
    seen: list[tuple[int, int]] = []
    pipeline.restore_one(request(model, photo, on_step=lambda i, n: seen.append((i, n))))
    assert seen == [(i, STEPS) for i in range(1, STEPS + 1)]


def test_a_cancelled_image_stops_and_its_batch_mates_finish(model, pipeline, photo):
    steps: list[int] = []
    cancel = request(
        model, photo, on_step=lambda i, n: steps.append(i), should_cancel=lambda: len(steps) >= 1
    )
    with pytest.raises(Cancelled):
        pipeline.restore_one(cancel)
    assert steps == [1]

    steps.clear()
    cancel = request(
        model, photo, on_step=lambda i, n: steps.append(i), should_cancel=lambda: len(steps) >= 1
    )
    results = pipeline.restore([cancel, request(model, photo, seed=9)])
    assert isinstance(results[0], Cancelled)
    alone = pipeline.restore_one(request(model, photo, seed=9))
    torch.testing.assert_close(results[1], alone, atol=1e-4, rtol=0)


def test_guidance_scale_one_needs_no_negative_prompt(model, pipeline, photo):
    unguided = sampling(pipeline, guidance_scale=1.0)
    req = replace(request(model, photo, options=unguided), negative_text=None)
    assert pipeline.restore_one(req).shape == photo.shape
    with pytest.raises(InvalidParameterError):
        pipeline.restore_one(replace(req, options=None))


# -- one image, one noise field -----------------------------------------------------------------


def tiled(pipeline: TiledSampler, tile: int, overlap: int = 4, **changes) -> InferenceConfig:
    return sampling(pipeline, latent_tile=tile, latent_tile_overlap=overlap, **changes)


def test_the_tile_size_does_not_change_the_noise(model, pipeline, photo):
    """The start and sampler noise are drawn once for the whole latent canvas, so tiles of
    another size see the same noise where they lie: outputs with two tile sizes agree far
    more closely than two seeds do (measured 0.016 against 0.13 mean |difference| on a flat
    image; here on a photo), in the interior away from every tile edge too."""
    small, large = tiled(pipeline, 8), tiled(pipeline, 12)
    a = pipeline.restore_one(request(model, photo, seed=1, options=small))
    b = pipeline.restore_one(request(model, photo, seed=1, options=large))
    other = pipeline.restore_one(request(model, photo, seed=2, options=small))
    interior = (slice(None), slice(40, 88), slice(40, 152))
    seeds = (a - other)[interior].abs().mean()
    assert (a - b)[interior].abs().mean() < 0.25 * seeds
    assert (a - b).abs().mean() < 0.25 * (a - other).abs().mean()


def _autocorrelation(image: torch.Tensor, lag: int) -> float:
    """Correlation of each row with itself shifted by ``lag`` pixels, over all rows."""
    x = image - image.mean(dim=-1, keepdim=True)
    return ((x[..., :-lag] * x[..., lag:]).mean() / (x * x).mean()).item()


def test_a_flat_image_shows_no_period_at_the_tile_stride(model, pipeline, monkeypatch):
    """A flat image gets all its texture from the noise. With one noise field its row
    autocorrelation has no peak at the tile stride (measured -0.04 at the stride, -0.04 to
    0.01 around it); noise that repeats every tile, as when each tile is seeded alike (the
    fault this guards against, injected here by making every random draw repeat with the
    stride), gives a peak of 0.97."""
    flat = torch.full((3, 128, 256), 0.5)
    options = tiled(pipeline, 8, color_fix="none")
    stride = (8 - 4) * 8  # latent stride x VAE factor, in pixels
    neighbours = [stride + d for d in (-16, -12, -8, -4, 4, 8, 12, 16)]

    def peak(image: torch.Tensor) -> float:
        at_stride = _autocorrelation(image, stride)
        return at_stride - max(_autocorrelation(image, lag) for lag in neighbours)

    one_field = pipeline.restore_one(request(model, flat, options=options))
    assert peak(one_field) <= 0.0 and _autocorrelation(one_field, stride) < 0.2

    randn = torch.randn

    def repeating(shape, *args, **kwargs):  # every draw repeats along x with the tile stride
        period = randn((*shape[:-1], stride // 8), *args, **kwargs)
        return period.repeat(*[1] * (len(shape) - 1), -(-shape[-1] // period.shape[-1]))[
            ..., : shape[-1]
        ]

    monkeypatch.setattr(torch, "randn", repeating)
    per_tile = pipeline.restore_one(request(model, flat, options=options))
    assert peak(per_tile) > 0.5


# -- work done once per image or per batch of tiles -----------------------------------------------


def test_step_invariant_work_is_done_once_and_changes_nothing(model, pipeline, photo, monkeypatch):
    """With the step cache, every MSFM computes its modulation once per batch of tiles and
    every CSM its Connector's image tokens once, and the denoiser gets the very same control
    and prompt tensors at every step; without it (``step_cache_mb`` 0) all of it is redone
    each step.
    The results are identical: the same operations, done once instead of every step."""
    calls = {"modulation": 0, "connector": 0}
    original = MSFM.modulation

    def counted(*args, **kwargs):
        calls["modulation"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(MSFM, "modulation", counted)
    connectors = [m.connector for m in model.denoiser.modules() if isinstance(m, CSM)]
    seen: list[tuple[int, int]] = []
    hooks = [
        model.denoiser.register_forward_pre_hook(
            lambda _, args: seen.append((args[2].data_ptr(), args[3].data_ptr()))
        ),
        *(
            c.register_forward_pre_hook(
                lambda *_: calls.__setitem__("connector", calls["connector"] + 1)
            )
            for c in connectors
        ),
    ]
    results = {}
    try:
        for budget in (16384, 0):
            calls.update(modulation=0, connector=0)
            seen.clear()
            cached = sampler_of(model, step_cache_mb=budget)
            results[budget] = cached.restore_one(request(model, photo, options=tiled(pipeline, 12)))
            results[budget, "calls"] = dict(calls)
            results[budget, "inputs"] = len(set(seen))
    finally:
        for hook in hooks:
            hook.remove()
    chunks, msfms, csms = 2, 6, 6  # 6 tiles of 12 latents in batches of 4
    assert results[16384, "calls"] == {"modulation": chunks * msfms, "connector": chunks * csms}
    assert results[0, "calls"] == {
        "modulation": STEPS * chunks * msfms,
        "connector": STEPS * chunks * csms,
    }
    assert results[16384, "inputs"] == chunks  # the same tensors at every step
    assert torch.equal(results[16384], results[0])


def test_the_start_is_the_noised_lr_latent_or_pure_noise(model, pipeline, photo):
    first: list[torch.Tensor] = []
    hook = model.denoiser.register_forward_pre_hook(lambda _, args: first.append(args[0]))
    try:
        for start in ("lr", "noise"):
            pipeline.restore_one(
                request(model, photo, seed=4, options=sampling(pipeline, start=start))
            )
    finally:
        hook.remove()
    from_lr, from_noise = first[0], first[STEPS]
    scheduler = make_scheduler("ddpm", pipeline.scheduler_config)
    scheduler.set_timesteps(STEPS)
    noise = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(4))
    lr_latent = pipeline.encode(photo)[None]
    expected_lr = scheduler.add_noise(lr_latent, noise, scheduler.timesteps[:1])
    # Guided: the batch holds the unconditional copy, then the conditional one.
    torch.testing.assert_close(from_lr[:1], expected_lr, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        from_noise[:1], noise * scheduler.init_noise_sigma, atol=1e-6, rtol=0
    )


def test_the_conditioning_scale_weighs_the_controlnet(model, pipeline, photo):
    """Scale 0 is the U-Net alone (the same as a ControlNet whose outputs are all zero);
    1 and 2 weigh the ControlNet's residuals in."""

    def with_zero_convs(fill) -> TiledSampler:
        denoiser = copy.deepcopy(model.denoiser)
        controlnet = denoiser.controlnet
        with torch.no_grad():
            for block in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
                fill(block.weight)
                block.bias.zero_()
        return sampler_of(model, denoiser)

    live = with_zero_convs(lambda w: torch.nn.init.normal_(w, std=0.1))
    silenced = with_zero_convs(torch.nn.init.zeros_)

    def run(pipe: TiledSampler, scale: float) -> torch.Tensor:
        options = sampling(pipeline, conditioning_scale=scale)
        return pipe.restore_one(request(model, photo, options=options))

    off, normal, double = run(live, 0.0), run(live, 1.0), run(live, 2.0)
    assert (normal - off).abs().mean() > 1e-3 and (double - normal).abs().mean() > 1e-3
    torch.testing.assert_close(run(silenced, 1.0), off, atol=1e-5, rtol=0)


def test_a_zero_gated_model_samples_exactly_as_the_base_pipeline(photo):
    """Every LGWAM gate read back and set to sigmoid(g) = 0 and every MSFM output at zero:
    the whole pipeline gives what the same networks give without the MegaSR modules (plain
    diffusers SD + ControlNet with the same weights), although W of every LGWAM is trained
    (random)."""
    with one_thread():
        gated = build_tiny_pipeline(seed=0).freeze()
        randomise_new_modules(gated.denoiser, std=0.1)
        with torch.no_grad():
            for module in gated.denoiser.modules():
                if isinstance(module, LGWAM):
                    module.gate.fill_(-float("inf"))
                if isinstance(module, MSFM):
                    module.out.weight.zero_()
                    module.out.bias.zero_()
        assert all(
            torch.sigmoid(m.gate).max() == 0
            for m in gated.denoiser.modules()
            if isinstance(m, LGWAM)
        )
        base = PlainDenoiser.of(gated.denoiser)
        options = replace(gated.inference, steps=2)
        (lr,) = gated.prepare([RestoreInput(photo[:, :64, :96], (64, 96), seed=3, options=options)])
        plain = TiledSampler(base, gated.vae, gated.scheduler_config, options)
        # Equal to float rounding: the plain copy's CPU kernels sum some reductions in another
        # order (up to 1e-6 in one U-Net forward even with every MegaSR module switched off);
        # the networks' own zero-gate test (test_megasr_networks) is bit for bit.
        torch.testing.assert_close(gated.restore_one(lr), plain.restore_one(lr), atol=1e-4, rtol=0)


def test_preparation_runs_each_extractor_once_for_all_images(model, photo):
    """The images of a call go through CLIP (tokens and tags from one vision pass), depth,
    segmentation and the text encoder together; HED once per image size."""
    calls: dict[str, int] = {}
    extractors = model.extractors
    counted = {
        "clip vision": extractors.clip.model.vision_model,
        "depth": extractors.depth.model,
        "segmentation": extractors.segmentation.model,
        "hed": extractors.hed,
        "text encoder": model.text_encoder,
    }
    hooks = [
        module.register_forward_pre_hook(
            lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
        )
        for name, module in counted.items()
    ]
    try:
        requests = model.prepare(
            [
                RestoreInput(photo[:, :32, :48], (128, 192), prompt="a cup"),
                RestoreInput(photo[:, 32:64, :48], (128, 192)),
                RestoreInput(photo[:, :16, :16], (64, 64), prompt="coffee"),
            ]
        )
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {
        "clip vision": 1,
        "depth": 1,
        "segmentation": 1,
        "hed": 2,
        "text encoder": 1,
    }
    assert [tuple(r.hed.shape) for r in requests] == [(1, 128, 192), (1, 128, 192), (1, 64, 64)]
    # Each image's depth is stretched over that whole image.
    assert all(r.depth.min() == 0 and r.depth.max() == 1 for r in requests)


def test_images_with_and_without_some_conditions_share_a_call(model, pipeline, photo):
    """Requests without image tokens or without guidance maps batch with full ones: tiles run
    in passes of like conditions (the batch key holds which conditions are present), and each
    image comes out as it does alone. Before, such a call failed ("condition 'image_tokens'
    is missing in part of a batch")."""
    full = request(model, photo, seed=1)
    also_full = request(model, photo.flip(-1), seed=4)
    no_tokens = replace(request(model, photo, seed=2), image_tokens=None)
    no_maps = replace(request(model, photo, seed=3), hed=None, depth=None, seg=None)
    mixed = [full, no_tokens, also_full, no_maps]
    passes: list[int] = []
    together = pipeline.restore(mixed, batch_size=8, on_batch=passes.append)
    assert passes == [2, 1, 1] * STEPS  # the two full requests together, the others apart
    for one, many in zip(mixed, together, strict=True):
        torch.testing.assert_close(many, pipeline.restore_one(one), atol=1e-4, rtol=0)
    # The missing conditions really are missing: the same seed with them differs.
    with_tokens = pipeline.restore_one(replace(no_tokens, image_tokens=full.image_tokens))
    assert (with_tokens - together[1]).abs().max() > 1e-3
