"""Exception types of al-det.

Library code raises these for every problem a user can fix (bad config, bad COCO file, bad
dump, impossible budget...). The CLI turns them into one line on stderr and a non-zero exit,
never a traceback. Reads and writes nothing.
"""


class AlDetError(Exception):
    """A problem the user can act on; the message names the file/key/image and what to do."""


class ConfigError(AlDetError):
    """The experiment config or a command-line override is invalid."""


class CocoError(AlDetError):
    """A COCO file (pool, test, labeled, imported annotations) is invalid."""


class DumpError(AlDetError):
    """A detections dump folder violates docs/detections-dump.md."""


class SplitError(AlDetError):
    """Labeled/unlabeled splits or a selection break the cycle invariants."""


class AcquireError(AlDetError):
    """An acquisition cannot be made as asked (budget, strategy, parameters, inputs)."""


class WorkdirError(AlDetError):
    """The work dir is missing a stage's input, is locked, or holds a corrupted artifact."""
