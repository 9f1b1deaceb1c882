"""Ways to damage a saved checkpoint step, shared by the checkpoint tests and the reliability table."""
import os
import pathlib
import shutil


def largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    """The biggest array data file of the step's saved state."""
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def flip_byte(path: pathlib.Path) -> None:
    """Inverts the byte in the middle of ``path``."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damages(truncate_to: int) -> dict:
    """Name -> function(step_dir) doing that damage; "truncate" keeps ``truncate_to`` bytes of the data file."""
    return {
        "truncate": lambda step_dir: os.truncate(largest_data_file(step_dir), truncate_to),
        "delete": lambda step_dir: largest_data_file(step_dir).unlink(),
        "empty_metadata": lambda step_dir: (step_dir / "state" / "_METADATA").write_text(""),
        "flip_byte": lambda step_dir: flip_byte(largest_data_file(step_dir)),
        "no_checksums": lambda step_dir: shutil.rmtree(step_dir / "checksums"),
        "empty_position": lambda step_dir: (step_dir / "data" / "metadata").write_text(""),
    }
