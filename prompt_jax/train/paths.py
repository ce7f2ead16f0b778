"""Model-dir paths: local, gs:// and any other filesystem `etils.epath` supports.

Every read and write under a run's model dir goes through `as_path`, so
`MODEL_DIR=gs://bucket/run` is a bucket path on every worker (never a local directory named
`gs:`). A local path may also be given as a `file://` URI.
"""

from __future__ import annotations

import os
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]
_FILE_URI = "file://"


def as_path(path: PathLike) -> epath.Path:
  """The model-dir path as an `epath.Path` (`file:///x` -> `/x`)."""
  text = os.fspath(path)
  if text.startswith(_FILE_URI):
    text = text[len(_FILE_URI):] or "/"
  return epath.Path(text)


def is_local(path: PathLike) -> bool:
  """Whether `path` is on the local filesystem (locks and appends need one)."""
  text = os.fspath(path)
  return text.startswith(_FILE_URI) or "://" not in text
