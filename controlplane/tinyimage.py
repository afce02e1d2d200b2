"""`loom-tiny`: the image every fresh Loom has, so the first `openstack server create` has
something to boot.

It is a 1 MiB raw disk whose boot sector prints one line on the first serial port and halts
the CPU. Simulated hosts never read image bytes; a real QEMU guest boots it in well under a
second, and `openstack console log show` then shows BOOT_MESSAGE. Real-mode x86 code, 24
bytes, assembled by hand here because it is the whole program (offsets in the comments):

    00 FA        cli
    01 31 C0     xor ax, ax
    03 8E D8     mov ds, ax            ; the BIOS leaves DS undefined
    05 FC        cld
    06 BE imm16  mov si, 0x7C00+MSG
    09 BA F8 03  mov dx, 0x3F8         ; COM1's data port
    0C AC        lodsb                 ; next:
    0D 84 C0     test al, al
    0F 74 03     jz halt
    11 EE        out dx, al
    12 EB F8     jmp next
    14 F4        hlt                   ; halt:
    15 EB FD     jmp halt
    17 ...       the message, NUL-terminated
"""

from __future__ import annotations

IMAGE_NAME = "loom-tiny"
BOOT_MESSAGE = "loom-tiny: booted from its disk; halting."
DISK_BYTES = 1024 * 1024
_LOAD_ADDRESS = 0x7C00
_MSG_OFFSET = 0x17


def boot_sector() -> bytes:
    """The 512-byte boot sector, ending in the 0x55AA signature BIOSes look for."""
    msg_address = (_LOAD_ADDRESS + _MSG_OFFSET).to_bytes(2, "little")
    code = (
        b"\xfa\x31\xc0\x8e\xd8\xfc\xbe"
        + msg_address
        + b"\xba\xf8\x03\xac\x84\xc0\x74\x03\xee\xeb\xf8\xf4\xeb\xfd"
    )
    assert len(code) == _MSG_OFFSET
    body = code + BOOT_MESSAGE.encode("ascii") + b"\r\n\0"
    return body.ljust(510, b"\0") + b"\x55\xaa"


def disk_image() -> bytes:
    """The whole raw disk: the boot sector, then zeros to DISK_BYTES."""
    return boot_sector().ljust(DISK_BYTES, b"\0")
