"""Mask unit: each block's static-mask rows, fetched on request and kept in small banks."""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .common import Geometry, ReadPort, block_layout, mask_layout, mask_request_layout

__all__ = ["MaskUnit", "mask_word_layout"]


def mask_word_layout(geo: Geometry):
    """Present flags of ``C`` consecutive keys for each of the ``R`` rows of a block."""
    return data.ArrayLayout(unsigned(geo.C), geo.R)


class MaskUnit(wiring.Component):
    """Loads the static-mask rows of a block into one of two bank sets (a block's set is its
    number's parity), so the next block's rows load while the current block uses its set.

    Members
    -------
    go : In(1)
        Load block ``block`` into set ``set``; without ``masked`` nothing is loaded.
    block : In(:func:`block_layout`), set : In(1), masked : In(1)
    done : Out(1)
        One cycle when the block's rows are in the banks (the cycle after ``go`` without a mask).
    mask_req : Out(stream of :func:`mask_request_layout`)
        The rows of the block's valid slots, in slot order.
    mask : In(stream of :func:`mask_layout`)
        One beat per request, in order.
    present_read, union_read : In(:class:`ReadPort` of :func:`mask_word_layout`)
        Address ``set * NCH + chunk``: keys ``chunk * C + c`` of every slot's row (two readers).

    Latency: requests leave one per cycle; each row takes ``ceil(n_keys / C)`` cycles to store.
    """

    def __init__(self, geo: Geometry):
        self.geo = geo
        super().__init__({
            "go": In(1), "block": In(block_layout(geo.cfg)), "set": In(1), "masked": In(1),
            "done": Out(1),
            "mask_req": Out(stream.Signature(mask_request_layout(geo.cfg))),
            "mask": In(stream.Signature(mask_layout(geo.cfg))),
            "present_read": In(ReadPort(2 * geo.NCH, mask_word_layout(geo))),
            "union_read": In(ReadPort(2 * geo.NCH, mask_word_layout(geo))),
        })

    def elaborate(self, platform):
        geo = self.geo
        m = Module()
        R, C, NCH = geo.R, geo.C, geo.NCH
        block = Signal(block_layout(geo.cfg))
        bank_set = Signal()
        rows = Signal(range(R + 1))              # valid slots (a prefix of the block)
        requested = Signal(range(R + 1))
        stored = Signal(range(R + 1))
        chunks = Signal(range(NCH + 1))          # chunks of a row to store
        chunk = Signal(range(NCH + 1))
        keys = Signal(geo.T + C)                 # the row being stored, shifted C keys per cycle
        storing = Signal()
        active = Signal()

        writes = []
        for r in range(R):
            bank = memory.Memory(shape=unsigned(C), depth=2 * NCH, init=[])
            m.submodules[f"bank{r}"] = bank
            write = bank.write_port()
            m.d.comb += [write.addr.eq(bank_set * NCH + chunk), write.data.eq(keys[:C]),
                         write.en.eq(storing & (stored == r))]
            writes.append(write)
            for reader in (self.present_read, self.union_read):
                port = bank.read_port()
                m.d.comb += [port.addr.eq(reader.addr), port.en.eq(reader.en),
                             reader.data[r].eq(port.data)]

        m.d.comb += [self.mask_req.valid.eq(active & (requested < rows)),
                     self.mask_req.payload.row.eq(block.rows[0])]
        for r in range(1, R):
            with m.If(requested == r):
                m.d.comb += self.mask_req.payload.row.eq(block.rows[r])
        with m.If(self.mask_req.valid & self.mask_req.ready):
            m.d.sync += requested.eq(requested + 1)
        m.d.comb += self.mask.ready.eq(active & ~storing & (stored < requested))
        with m.If(self.mask.valid & self.mask.ready):
            m.d.sync += [keys.eq(self.mask.payload.keys), storing.eq(1), chunk.eq(0)]
        with m.If(storing):
            m.d.sync += [keys.eq(keys >> C), chunk.eq(chunk + 1)]
            with m.If(chunk + 1 == chunks):
                m.d.sync += [storing.eq(0), stored.eq(stored + 1)]

        valid_count = sum(block_valid for block_valid in self.block.valid)
        with m.If(self.go):
            m.d.sync += [block.eq(self.block), bank_set.eq(self.set), requested.eq(0), stored.eq(0),
                         rows.eq(valid_count), chunks.eq((self.block.n_keys + C - 1) // C),
                         active.eq(self.masked)]
            m.d.comb += self.done.eq(~self.masked)
        with m.Elif(active & (stored == rows) & ~storing):
            m.d.sync += active.eq(0)
            m.d.comb += self.done.eq(1)
        return m
