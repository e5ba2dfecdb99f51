"""Media files as markdown a browser opens from the Prefect UI: one card per file, its content embedded.

A ``file://`` link from the UI page is refused by browsers, and a link to a workspace file shows whatever the
next run wrote there. So a card carries the file itself: an image as a ``data:`` URI in a markdown image, a
video re-encoded to VP9 WebM (the rollout mp4s use MPEG-4 Part 2, which browsers do not decode) in an inline
``<video>`` player (the UI's sanitiser keeps ``data:`` URIs on ``<video>``). The artifact is thereby frozen to
the run that made it. A file too large to embed gets a card saying so, with a content-addressed copy under
``.vpdd/artifacts/`` (never overwritten by a later run) instead of being dropped.
"""

from __future__ import annotations

import base64
import io
import shutil
from fractions import Fraction
from pathlib import Path

from vpdd.utils.io import sha256_file as sha256

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml", ".webp": "image/webp"}
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi")
MEDIA_SUFFIXES = (*IMAGE_TYPES, *VIDEO_SUFFIXES)
EMBED_LIMIT = 3 * 1024 * 1024  # bytes of one embedded file; above it the card points at the frozen copy
FROZEN_DIR = ".vpdd/artifacts"

# What each figure of the pipeline shows, for its card.
CAPTIONS = {
    "recon_grid.png": "Tokenizer reconstructions: each pair of rows is one held-out clip, the real frames "
                      "(top, `truth`) over the VQ-VAE reconstruction (bottom, `recon`); time runs left to right.",
    "samples.png": "Video prediction on training sequences, one per row: `history` (the frames the model "
                   "sees) | `truth` (the real future) | `prediction` (the model's decoded future).",
    "success.png": "Closed-loop success rate per task with 95% Wilson intervals; the last bar is the mean.",
    "side_by_side.png": "Held-out clips: real future vs the tokenizer's reconstruction vs the policy's "
                        "predicted future (labelled in the image).",
    "side_by_side.gif": "The held-out side-by-side as an animation (real | reconstruction | prediction).",
}


def frozen_copy(repo: Path, path: Path) -> Path:
    """``repo/.vpdd/artifacts/<sha256 prefix>/<name>``: a copy no later run overwrites (mode 0644)."""
    dest = repo / FROZEN_DIR / sha256(path)[:16] / path.name
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(path, tmp)
        tmp.chmod(0o644)
        tmp.replace(dest)
    return dest


def browser_video(path: Path) -> bytes:
    """The video re-encoded as VP9 WebM (what every browser plays), same frames and frame rate."""
    import av

    buf = io.BytesIO()
    with av.open(str(path)) as src:
        ins = src.streams.video[0]
        rate = ins.average_rate or 20
        with av.open(buf, mode="w", format="webm") as dst:
            out = dst.add_stream("libvpx-vp9", rate=rate)
            out.width, out.height, out.pix_fmt = ins.codec_context.width, ins.codec_context.height, "yuv420p"
            out.options = {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"}
            for i, frame in enumerate(src.decode(ins)):
                frame = frame.reformat(format="yuv420p")
                frame.pts, frame.time_base = i, 1 / Fraction(rate)  # frame i at i / rate seconds
                for packet in out.encode(frame):
                    dst.mux(packet)
            for packet in out.encode():
                dst.mux(packet)
    return buf.getvalue()


def _data_uri(mime: str, blob: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(blob).decode('ascii')}"


def media_markdown(repo: Path, path: Path, what: str, caption: str | None = None) -> str:
    """The markdown of one file's card: title, caption, the embedded image or player, and provenance."""
    rel = path.relative_to(repo).as_posix()
    suffix = path.suffix.lower()
    digest = sha256(path)
    caption = caption or CAPTIONS.get(path.name)
    lines = [f"### {what}: `{rel}`", ""]
    if caption:
        lines += [caption, ""]
    body: str | None = None
    if suffix in IMAGE_TYPES and path.stat().st_size <= EMBED_LIMIT:
        body = f"![{rel}]({_data_uri(IMAGE_TYPES[suffix], path.read_bytes())})"
    elif suffix in VIDEO_SUFFIXES:
        blob = path.read_bytes() if suffix == ".webm" else browser_video(path)
        if len(blob) <= EMBED_LIMIT:
            body = (f'<video controls loop muted playsinline preload="metadata" title="{rel}" '
                    f'src="{_data_uri("video/webm", blob)}"></video>')
    if body is None:
        copy = frozen_copy(repo, path)
        lines.append(f"Too large to embed ({path.stat().st_size / 1e6:.1f} MB); this run's copy: "
                     f"`{copy.relative_to(repo).as_posix()}`")
    else:
        lines.append(body)
    lines += ["", f"sha256 `{digest[:16]}`, {path.stat().st_size / 1024:.0f} KiB, as written by this run"]
    return "\n".join(lines) + "\n"


def media_files(path: Path) -> list[Path]:
    """The media files of a file or folder path, sorted (a folder: recursively)."""
    if path.is_file():
        return [path] if path.suffix.lower() in MEDIA_SUFFIXES else []
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
    return []
