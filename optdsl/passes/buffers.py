"""Buffer reuse: give every tensor value in the kernel a place to live.

The kernel runs chunk by chunk; within a chunk each tensor value is written into a slot:

- ``in:NAME``: an input buffer (p, g, a state), for loaded values;
- ``out:NAME``: the output buffer itself, when the value is what the step stores there and
  the buffer's old value is no longer needed (so Adam's ``exp_avg`` is updated in place);
- ``f0, f1, ...`` / ``b0, ...``: chunk-sized scratch (float / bool), reused as soon as a
  value is dead.

Outputs that could not be written in place are copied from their slot at the end of the
chunk. Outputs that *are* another input (``momentum_buffer = g``), or that share a value
with another output, first get an explicit ``copy`` so that every stored value has its
own instruction; this also makes swaps (``a, b = b, a``) safe.
"""

from __future__ import annotations

from itertools import count

from ..ir import Instr, Program, Var

# Ops whose output must not share a slot with these argument positions. np.copyto-based
# ``where`` writes its third argument first, then the second where the condition holds.
_NO_ALIAS = {"where": (0, 1)}


def reuse_buffers(program: Program) -> Program:
    if program.slots is not None:
        return program
    body = list(program.body)
    ids = count(max([i.out.id for i in program.host + program.body], default=-1) + 1)
    defined_by = {i.out.id: i for i in body}
    outputs: list[tuple[str, Var]] = []
    claimed: set[int] = set()
    for name, var in program.outputs:
        ins = defined_by.get(var.id)
        if ins is None or ins.op == "load" or var.id in claimed:
            new = Var(next(ids), var.type, name)
            body.append(Instr(new, "copy", (var,), None, ins.span if ins else None))
            var = new
        claimed.add(var.id)
        outputs.append((name, var))

    last_use: dict[int, int] = {}
    for k, ins in enumerate(body):
        for a in ins.args:
            last_use[a.id] = k
    end = len(body)
    for _, var in outputs:
        last_use[var.id] = end
    loads = {i.attr: i.out.id for i in body if i.op == "load"}
    output_of = {var.id: name for name, var in outputs}

    slots: dict[int, str] = {}
    free: dict[str, list[str]] = {"f": [], "b": []}
    counters = {"f": count(), "b": count()}
    for k, ins in enumerate(body):
        if ins.op == "load":
            slots[ins.out.id] = f"in:{ins.attr}"
            continue
        forbidden = {ins.args[i].id for i in _NO_ALIAS.get(ins.op, ())}
        # Free the scratch of arguments that die here, so the result can reuse it in place.
        dying = [a for a in ins.args if last_use.get(a.id) == k and a.id not in forbidden]
        for a in dict.fromkeys(dying):
            slot = slots.get(a.id, "")
            if slot[:1] in free and slot[1:].isdigit() and slot not in free[slot[0]]:
                free[slot[0]].append(slot)
        name = output_of.get(ins.out.id)
        old = loads.get(name)
        if name is not None and (old is None or (last_use.get(old, -1) <= k
                                                 and old not in forbidden)):
            slots[ins.out.id] = f"out:{name}"
        else:
            kind = "b" if ins.out.type.elem == "bool" else "f"
            taken = {slots.get(i) for i in forbidden}
            choices = [s for s in free[kind] if s not in taken]
            if choices:
                slot = choices[-1]
                free[kind].remove(slot)
            else:
                slot = f"{kind}{next(counters[kind])}"
            slots[ins.out.id] = slot
        for a in dict.fromkeys(ins.args):  # where's protected args die after the op
            if a.id in forbidden and last_use.get(a.id) == k:
                slot = slots.get(a.id, "")
                if slot[:1] in free and slot[1:].isdigit() and slot not in free[slot[0]]:
                    free[slot[0]].append(slot)
    return program.with_(body=tuple(body), outputs=tuple(outputs),
                         slots=tuple(sorted(slots.items())))
