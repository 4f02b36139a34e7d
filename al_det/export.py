"""``al-det export``: the image files of a cycle's ``to_label.json``, gathered for upload.

Reads the work dir's frozen config (``data.pool_images``) and ``cycle_K/to_label.json``;
writes ``DIR/<file_name>`` for every selected image (sub-folders of ``file_name`` kept, so the
names in the hand-off files still match): a hard link where ``DIR`` is on the images' file
system, else a symbolic link, or a copy with ``--copy`` (through a temporary name, renamed
when complete). Every source is checked before anything is written; a file already in
``DIR`` is kept when it is the same file or the same bytes, and is an error otherwise.
"""

from __future__ import annotations

import errno
import filecmp
import os
import shutil
from pathlib import Path

from al_det import atomic
from al_det.errors import WorkdirError
from al_det.workdir import open_workdir, read_split

MAX_LISTED = 5
# link() fails with these where a symbolic link still works (other file system, no rights)
_NO_HARDLINK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP}


def run_export(workdir: Path, cycle: int | None, dest: Path, copy: bool = False) -> str:
    """Link (or copy) cycle ``cycle``'s images to label into ``dest``; return what it did."""
    wd, cfg = open_workdir(workdir)
    cur = wd.resolve_cycle(cycle)
    if not cur.to_label.exists():
        raise WorkdirError(f"{cur.to_label}: missing: run `al-det acquire -w {wd.root}` first "
                           "(in labelling mode)")
    images = read_split(cur.to_label)["images"]
    pairs = _sources(Path(cfg.data.pool_images), Path(dest), images)
    counts = {"hard links": 0, "symbolic links": 0, "copies": 0, "already there": 0}
    for src, dst in pairs:
        counts[_place(src, dst, copy)] += 1
    done = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    return (f"cycle {cur.index}: {len(pairs)} images to label in {dest} ({done}); upload them, "
            f"then import {cur.ls_tasks} (Label Studio) or {cur.preannotations} (CVAT)")


def _sources(root: Path, dest: Path, images: list[dict]) -> list[tuple[Path, Path]]:
    pairs = []
    for im in images:
        rel = Path(im["file_name"])
        if rel.is_absolute() or ".." in rel.parts:
            raise WorkdirError(f"to_label.json: file_name {im['file_name']!r} (image id "
                               f"{im['id']}) is not a relative path below the images folder")
        pairs.append((root / rel, dest / rel))
    missing = [f"{src} (image id {im['id']})" for (src, _), im in zip(pairs, images, strict=True)
               if not src.is_file()]
    if missing:
        more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise WorkdirError(f"{len(missing)} images to label are missing: "
                           f"{missing[:MAX_LISTED]}{more}; restore them under {root} "
                           "(data.pool_images)")
    return pairs


def _place(src: Path, dst: Path, copy: bool) -> str:
    """Put ``src`` at ``dst``; return how ("hard links", "symbolic links", "copies", ...)."""
    if dst.exists() or dst.is_symlink():
        if dst.exists() and (os.path.samefile(src, dst) or filecmp.cmp(src, dst, shallow=False)):
            return "already there"
        raise WorkdirError(f"{dst}: exists and is not {src}; remove it or export into an "
                           "empty folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        with atomic.atomic_open(dst, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
        return "copies"
    try:
        os.link(src, dst)
        return "hard links"
    except OSError as exc:
        if exc.errno not in _NO_HARDLINK:
            raise WorkdirError(f"{dst}: cannot link {src} ({exc.strerror}); use --copy") from exc
    os.symlink(src.resolve(), dst)
    return "symbolic links"
