"""What a benchmark runs on: a folder of images or clips (flat, or ImageFolder: one sub-folder per class), a
CSV ``file,label``, or a text file of prompts (one per line). Labels are optional. A clip is a file with a
video suffix (``tomviz.inputs.video.VIDEO_SUFFIXES``: mp4, webm, mov, ...); see :mod:`tomviz.bench.clips`.

Items are only listed here (paths and texts); workers read the images, so an unreadable file is
reported on its own row and the sweep goes on. On a cluster the paths must be readable from every node.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tomviz.inputs.video import VIDEO_SUFFIXES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Item:
    """One input: an image path or a prompt, with its label (a class name or id) when known."""

    name: str  # unique within the benchmark: the path relative to the input root, or "line N"
    path: str | None = None  # an image file
    text: str | None = None  # a prompt
    label: str | None = None

    @property
    def is_clip(self) -> bool:
        """A video file (by its suffix)."""
        return self.path is not None and Path(self.path).suffix.lower() in VIDEO_SUFFIXES


def list_items(source: str | Path) -> list[Item]:
    """Items of a folder of images, a ``.csv`` (``file,label``; header optional) or a ``.txt`` of prompts."""
    source = Path(source)
    if source.is_dir():
        return _folder_items(source)
    if not source.is_file():
        raise ValueError(f"input {str(source)!r} not found: give a folder of images or clips, a .csv or a .txt file")
    if source.suffix.lower() == ".csv":
        return _csv_items(source)
    if source.suffix.lower() == ".txt":
        lines = source.read_text().splitlines()
        return [Item(name=f"line {i + 1}", text=line.strip()) for i, line in enumerate(lines) if line.strip()]
    raise ValueError(f"input {str(source)!r}: give a folder of images, a .csv (file,label) or a .txt of prompts")


def _folder_items(root: Path) -> list[Item]:
    """Files directly in ``root`` (no label) and files in its sub-folders (label = the sub-folder's name).
    Every file is listed, not only those with an image suffix beside images, so a broken one shows up."""
    items = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        relative = path.relative_to(root)
        if len(relative.parts) == 1 and path.suffix.lower() not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
            continue  # a README or a labels file beside a flat folder of images or clips
        label = relative.parts[0] if len(relative.parts) > 1 else None
        items.append(Item(name=relative.as_posix(), path=str(path), label=label))
    if not items:
        raise ValueError(f"no images or clips found in {str(root)!r}")
    return items


def _csv_items(path: Path) -> list[Item]:
    with path.open(newline="") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] in (["file", "label"], ["file"]):
        rows = rows[1:]
    items = []
    for row in rows:
        file = Path(row[0].strip())
        full = file if file.is_absolute() else path.parent / file
        label = row[1].strip() if len(row) > 1 and row[1].strip() else None
        items.append(Item(name=row[0].strip(), path=str(full), label=label))
    if not items:
        raise ValueError(f"{str(path)!r} lists no files")
    return items


def label_id(label: str | None, labels: dict[int, str] | None) -> int | None:
    """The model's class id for ``label`` (a class name, one of its comma-separated synonyms, or an id);
    None when there is no label. ValueError when the model has no such class or no classes."""
    if label is None:
        return None
    if not labels:
        raise ValueError(f"label {label!r} given, but the model has no classification head")
    wanted = label.strip().lower()
    if wanted.isdigit() and int(wanted) in labels:
        return int(wanted)
    for index, name in labels.items():
        names = {name.strip().lower(), *(part.strip().lower() for part in name.split(","))}
        if wanted in names or wanted.replace("_", " ") in names:
            return int(index)
    raise ValueError(f"label {label!r} is not one of the model's {len(labels)} classes")
