"""Durable files on disk, without trio: the sync primitives, the Maildir format, and the child
process that runs a group commit away from the server's GIL (``worker``).

Nothing here imports trio, so the batch-process child starts in a few tens of milliseconds.
"""

from ._sync import fsync_path as fsync_path
from ._sync import syncfs as syncfs
from ._sync import write_file as write_file
