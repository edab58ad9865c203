"""Data: real-layout readers, phantom generators, partitioners, transforms and caching.

Every reader turns a data root into a list of :class:`~ctan.data.base.Case` records (cheap, no
image loading) and loads one case into a sample dictionary; see :mod:`ctan.data.base` for the
contract the training engine relies on.
"""
