"""``predict`` inputs that need this layer: a data spec's images as a stream of cases.

The runtime predicts on files and folders by itself (:func:`medfm_compress.runtime.predict.file_cases`); a data
spec (``synthetic?size=32``, ``folder:DIR``, ``medmnist:FILE.npz``, ...) needs :func:`~.spec.load_data`, so it is
resolved here, one layer up, into the same :class:`~medfm_compress.runtime.predict.Cases` stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import DataError
from ..runtime.predict import Case, Cases, chain_cases, file_cases
from .patches import case_shapes
from .spec import DATA_KINDS, load_data, parse_data_spec

__all__ = ["spec_cases", "input_cases", "is_data_spec"]


def is_data_spec(text: str) -> bool:
    """True when ``text`` is not an existing path and reads as a data spec (``KIND:PATH``, ``synthetic?...``,
    ``FILE.npz``); a string that names a data kind but is malformed raises that spec's error."""
    if Path(text).exists():
        return False
    head = text.partition("?")[0]
    kind = head.partition(":")[0]
    if kind in DATA_KINDS or head.endswith(".npz"):
        parse_data_spec(text)  # a malformed spec of a known kind: its own error
        return True
    return False


def spec_cases(spec: str) -> Cases:
    """The cases of a data spec: its test split's images (a folder without labels.csv, or any task with one split:
    all its images), named ``spec#index``. Images are read one at a time when the task streams them."""
    task = load_data(spec, require_labels=False)
    if "test" in task.splits and len(task.splits["test"]):
        split_name = "test"
    elif len(task.splits) == 1:
        split_name = next(iter(task.splits))
    else:
        raise DataError(
            f"{spec} has no test split to predict on (splits: {', '.join(task.splits) or 'none'})"
        )
    images = task.splits[split_name].images
    n = int(images.shape[0])
    if n < 1:
        raise DataError(f"the {split_name} split of {spec} is empty")
    # Whole cases (segmentation on patches) are padded to the largest: each is given at its own size.
    shapes = case_shapes(task, split_name) if task.whole_cases and split_name != "train" else None

    def load(i: int):
        return images[i] if shapes is None else images[i][tuple(slice(0, k) for k in shapes[i])]

    def items() -> Iterator[Case]:
        for i in range(n):
            yield Case(f"{spec}#{i}", lambda i=i: load(i))

    which = "its test split" if split_name == "test" else f"all its images ({split_name!r}, the only split)"
    return Cases(n, items(), (f"{spec}: {n} images, {which}",))


def input_cases(
    inputs: Iterable[str | os.PathLike],
    window: tuple[float, float] | None = None,
    exclude: str | os.PathLike | None = None,
) -> Cases:
    """Cases from ``predict``'s inputs, in order: files and folders (see
    :func:`~medfm_compress.runtime.predict.file_cases`, with the model's intensity ``window`` and the output folder
    ``exclude``) and data specs (:func:`spec_cases`)."""
    parts: list[Cases] = []
    paths: list[str] = []
    for item in inputs:
        text = str(item)
        if is_data_spec(text):
            if paths:
                parts.append(file_cases(paths, window=window, exclude=exclude))
                paths = []
            parts.append(spec_cases(text))
        else:
            paths.append(text)
    if paths:
        parts.append(file_cases(paths, window=window, exclude=exclude))
    return chain_cases(parts)
