"""``megasr upscale`` end to end: real photos, the real default engine, real files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from megasr_tiny import one_thread
from PIL import Image
from scipy import ndimage

from megasr.cli.main import main


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the luma, the classic no-reference focus measure.

    Bicubic interpolation spreads every edge over several pixels and so leaves almost no
    second derivative; a restoring upscaler rebuilds steep edges. (The mean gradient is a
    poor measure here: the GAN also cleans flat areas, which lowers it.)
    """
    luma = np.asarray(Image.fromarray(image).convert("L"), dtype=np.float64)
    return float(ndimage.laplace(luma).var())


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    command = [sys.executable, "-m", "megasr.cli.main", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)


@pytest.fixture(scope="module")
def degraded(coffee: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The coffee photo reduced 4x (box filter), as a low-resolution input."""
    path = tmp_path_factory.mktemp("lr") / "coffee_lr.png"
    Image.fromarray(coffee).resize((150, 100), Image.Resampling.BOX).save(path)
    return path


def test_upscale_is_sharper_than_bicubic(degraded: Path, tmp_path: Path) -> None:
    out = tmp_path / "coffee_x4.png"
    result = run_cli("upscale", degraded, "-o", out, "--scale", "4", "--quiet")
    assert result.returncode == 0, result.stderr
    upscaled = np.asarray(Image.open(out).convert("RGB"))
    assert upscaled.shape == (400, 600, 3)
    bicubic = np.asarray(Image.open(degraded).resize((600, 400), Image.Resampling.BICUBIC))
    assert sharpness(upscaled) > 3 * sharpness(bicubic)  # measured here: about 9x


@pytest.mark.parametrize(
    ("flags", "size"),
    [
        (["--scale", "1"], (30, 20)),
        (["--scale", "2"], (60, 40)),
        (["--scale", "3.5"], (105, 70)),
        (["--scale", "4"], (120, 80)),
        (["--scale", "8"], (240, 160)),
        (["--width", "200"], (200, 133)),
        (["--height", "50"], (75, 50)),
    ],
)
def test_output_sizes(
    degraded: Path, tmp_path: Path, flags: list[str], size: tuple[int, int]
) -> None:
    small = tmp_path / "in.png"
    Image.open(degraded).crop((40, 30, 70, 50)).save(small)  # 30 x 20
    out = tmp_path / "out.webp"
    assert main(["upscale", str(small), "-o", str(out), "--quiet", *flags]) == 0
    with Image.open(out) as result:
        assert result.format == "WEBP"
        assert result.size == size


def test_folder_in_folder_out(degraded: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(degraded).crop((0, 0, 24, 16)).save(inputs / "a.png")
    Image.open(degraded).crop((0, 0, 20, 20)).convert("RGB").save(inputs / "b.jpg", quality=90)
    (inputs / "notes.txt").write_text("not an image, and not picked up")
    out = tmp_path / "out"
    assert main(["upscale", str(inputs), "-o", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg"]
    assert Image.open(out / "a.png").size == (96, 64)
    assert Image.open(out / "b.jpg").format == "JPEG"


def test_alpha_survives(tmp_path: Path) -> None:
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 15:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "logo.png")
    out = tmp_path / "logo_x2.png"
    assert (
        main(["upscale", str(tmp_path / "logo.png"), "-o", str(out), "--scale", "2", "--quiet"])
        == 0
    )
    result = np.asarray(Image.open(out))
    assert result.shape == (40, 60, 4)
    assert result[:, :25, 3].max() < 10 and result[:, 35:, 3].min() > 245


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"hello, I am text\n", "not"),
    ],
)
def test_bad_input_one_line_error_no_file(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(content)
    out = tmp_path / "out"
    result = run_cli("upscale", bad, "-o", out, "--quiet")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("megasr: error: ")
    assert message in lines[0].lower()
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_bad_input_is_refused_before_any_model_code_loads(tmp_path: Path) -> None:
    """A text file named .png, with the megasr engine and a checkpoint that does not exist:
    had the engine loaded first, the error would be about the checkpoint."""
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"hello, I am text\n")
    args = ["upscale", str(bad), "-o", str(tmp_path / "out"), "--engine", "megasr"]
    args += ["--model", str(tmp_path / "no-checkpoint")]
    script = f"import sys; from megasr.cli.main import main; s = main({args!r}); "
    script += "print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )

    assert result.stderr.strip().splitlines() == [
        f"megasr: error: {bad}: the data is not an image in a known format (or it is corrupt)"
    ]
    assert result.stdout.strip() == "[]"  # no torch, no model library imported


def run_on_terminal(*args: str | Path) -> tuple[int, str]:
    """``megasr ARGS`` with stdout and stderr on a 100-column pseudo-terminal: its screen."""
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    command = [sys.executable, "-m", "megasr.cli.main", *map(str, args)]
    with subprocess.Popen(command, stdout=secondary, stderr=secondary) as process:
        os.close(secondary)
        screen = _read_all(primary)
        return process.wait(timeout=300), screen


def test_a_terminal_sees_one_bar_and_the_files_written_a_log_only_the_files(
    tmp_path: Path, coffee: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(coffee[200:232, 300:340]).save(inputs / "a.png")
    (inputs / "notes.txt").write_text("left alone")
    (inputs / "broken.png").write_bytes(b"hello, I am text\n")
    flags = ["--scale", "2", "--tile", "32"]

    status = main(["upscale", str(inputs), "-o", str(tmp_path / "logged"), *flags])
    logged = capsys.readouterr()
    on_terminal, screen = run_on_terminal("upscale", inputs, "-o", tmp_path / "shown", *flags)

    assert status == on_terminal == 1  # broken.png was refused
    assert logged.out.splitlines() == [
        line for line in logged.out.splitlines() if line.startswith(f"wrote {tmp_path}")
    ]
    assert re.fullmatch(
        rf"wrote {tmp_path}/logged/a.png \(80x64, realesrgan-x4plus, \d+\.\d s\)\n", logged.out
    )
    assert logged.err.splitlines() == [
        f"megasr: error: {inputs / 'broken.png'}: the data is not an image in a known format "
        "(or it is corrupt)",
        "megasr: 1 written, 2 skipped (1 invalid image; 1 without an image suffix)",
    ]
    assert "\r" not in logged.err  # no bar drawn into a log
    assert "loading realesrgan-x4plus..." in screen and "1/1 a.png" in screen  # the one bar
    assert f"wrote {tmp_path}/shown/a.png (80x64" in screen


def _read_all(descriptor: int) -> str:
    """Everything written to a pseudo-terminal until its writer closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(descriptor, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(descriptor)
    return b"".join(chunks).decode(errors="replace")


def test_truncated_jpeg_leaves_no_half_file(tmp_path: Path, coffee: np.ndarray) -> None:
    full = tmp_path / "full.jpg"
    Image.fromarray(coffee[:64, :64]).save(full, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[:600])
    out = tmp_path / "out.png"
    assert main(["upscale", str(truncated), "-o", str(out), "--quiet"]) == 1
    assert not out.exists()
    assert list(tmp_path.glob("*.part")) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--scale", "9"], "between 1 and 8"),
        (["--scale", "2", "--width", "10"], "not both"),
        (["--format", "gif"], "format"),
        (["--quality", "0"], "quality"),
        (["--engine", "nope"], "unknown engine"),
        (["--steps", "0"], "steps must be at least 1"),
        (["--guidance-scale", "-1"], "guidance_scale must be"),
        (["--seed", "-3"], "seed must be between"),
    ],
)
def test_bad_options(
    degraded: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    assert main(["upscale", str(degraded), "-o", str(tmp_path / "x.png"), "--quiet", *flags]) == 1
    assert message in capsys.readouterr().err


def test_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upscale", str(tmp_path / "nothere.png"), "-o", str(tmp_path / "o")]) == 1
    assert "no such file or folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_megasr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random MegaSR checkpoint, made the way a user makes one."""
    directory = tmp_path_factory.mktemp("tiny-megasr")
    assert main(["model", "init", "--preset", "tiny", "--out", str(directory)]) == 0
    return directory


def test_megasr_takes_prompt_steps_and_seed(
    tiny_megasr: Path, degraded: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    crop = Image.open(degraded).crop((40, 30, 70, 50))  # 30 x 20
    crop.save(inputs / "a.png")
    crop.save(inputs / "b.png")
    diffusion = ["--steps", "2", "--prompt", "a cup of coffee", "--guidance-scale", "3"]

    def upscale(source: Path, out: Path, seed: str) -> None:
        args = ["upscale", str(source), "-o", str(out), "--engine", "megasr"]
        args += ["--model", str(tiny_megasr), "--scale", "2", "--quiet", "--seed", seed]
        assert main([*args, *diffusion]) == 0

    with one_thread():  # a tiny network: threads would only wait on each other
        upscale(inputs, tmp_path / "seed1", "1")
        upscale(inputs / "a.png", tmp_path / "seed2.png", "2")
    assert capfd.readouterr().err == ""  # --quiet: not even the libraries' loading bars

    first, second, reseeded = (
        np.asarray(Image.open(path))
        for path in (
            tmp_path / "seed1" / "a.png",
            tmp_path / "seed1" / "b.png",
            tmp_path / "seed2.png",
        )
    )
    assert first.shape == reseeded.shape == (40, 60, 3)
    assert np.array_equal(first, second)  # the same seed, the same image
    assert np.abs(first.astype(int) - reseeded).max() > 20  # another seed, other noise


def test_diffusion_options_leave_the_gan_engine_alone(degraded: Path, tmp_path: Path) -> None:
    small = tmp_path / "in.png"
    Image.open(degraded).crop((40, 30, 70, 50)).save(small)
    plain, optioned = tmp_path / "plain.png", tmp_path / "optioned.png"
    assert main(["upscale", str(small), "-o", str(plain), "--quiet"]) == 0
    flags = ["--prompt", "x", "--steps", "2", "--seed", "5", "--color-fix", "none"]
    assert main(["upscale", str(small), "-o", str(optioned), "--quiet", *flags]) == 0
    assert plain.read_bytes() == optioned.read_bytes()


def test_inductor_without_a_compiler_falls_back_with_a_message(
    coffee: np.ndarray, tmp_path: Path
) -> None:
    """A machine without g++ (a PATH where inductor finds none) still gets its image, eager,
    and one line saying why; nothing is compiled, so this runs at eager speed."""
    source = tmp_path / "small.png"
    Image.fromarray(coffee[200:232, 300:332]).save(source)
    env = {**os.environ, "PATH": str(tmp_path / "no-compilers-here"), "MEGASR_BACKEND": "eager"}
    command = [sys.executable, "-m", "megasr.cli.main", "upscale", str(source), "-o"]
    command += [str(tmp_path / "out.png"), "--backend", "inductor", "--tile", "32", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    assert result.returncode == 0, result.stderr
    assert "backend inductor unavailable, running eager: " in result.stderr
    assert "C++ compiler" in result.stderr
    assert Image.open(tmp_path / "out.png").size == (128, 128)
