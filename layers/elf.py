"""Which machine an ELF file was built for: the one map between Lambda architectures and ELF ``e_machine``.

Used by the layer builder (every shared object must be for the target) and by the CDK app (a layer zip
built for the other architecture is refused at synth). Standard library only.
"""

from __future__ import annotations

from typing import Final

# EM_X86_64 and EM_AARCH64, by the architecture names of the CDK context and the layer builder.
ELF_MACHINES: Final = {"x86_64": 62, "arm64": 183}
ARCHITECTURES_BY_MACHINE: Final = {machine: arch for arch, machine in ELF_MACHINES.items()}
# e_ident (16 bytes), e_type (2), e_machine (2).
HEADER_BYTES: Final = 20


def elf_machine(header: bytes) -> int | None:
    """The ``e_machine`` of the file whose first bytes are ``header``, or None if it is not ELF.

    Read as little-endian: both Lambda architectures are.
    """
    if len(header) < HEADER_BYTES or header[:4] != b"\x7fELF":
        return None
    return int.from_bytes(header[18:HEADER_BYTES], "little")


def architecture_name(machine: int) -> str:
    """``"x86_64"``, ``"arm64"``, or ``"e_machine <n>"`` for any other machine."""
    return ARCHITECTURES_BY_MACHINE.get(machine, f"e_machine {machine}")
