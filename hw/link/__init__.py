"""The board's host link: UART, SLIP frames, CRC-32 and the bridges that turn frames into AXI.

The protocol is :mod:`spattn.link`; :class:`HostLink` is the whole link, the other components are
its parts, each tested on its own.
"""

from .host_link import HostLink

__all__ = ["HostLink"]
