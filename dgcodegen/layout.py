"""Layout of a problem's parameters and data columns, for code that has no SymPy.

A `Layout` is the part of a declared loss that a solver needs at run time. It has the
names and shapes of the parameters, which are flattened row-major into one vector in
declaration order, the names and shapes of the data columns, and the starting point. It
checks data arrays and reads data files. This module imports only NumPy, the standard
library and `errors`, because `dgcodegen generate` copies it into standalone packages.
"""

from __future__ import annotations

import csv
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpecError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """Names, shapes and starting point of a problem.

    Attributes:
        name: Problem name.
        parameters: `(name, shape)` of each parameter, in declaration order.
        columns: `(name, shape)` of each data column, in declaration order; a column's
            shape is that of one sample, `()` or `(k,)`.
        initial: Starting point, flattened like the parameter vector.
    """

    name: str
    parameters: tuple[tuple[str, Shape], ...]
    columns: tuple[tuple[str, Shape], ...]
    initial: tuple[float, ...]

    @property
    def size(self) -> int:
        """Length of the flat parameter vector."""
        return sum(math.prod(shape) for _, shape in self.parameters)

    @property
    def has_data(self) -> bool:
        return bool(self.columns)

    def initial_point(self) -> np.ndarray:
        return np.array(self.initial, dtype=np.float64)

    def validate_data(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        """Check data arrays against the declared columns and return them as 2-D float64.

        Raises:
            SpecError: for a missing or unknown column, a wrong shape, unequal sample
                counts, or a `nan`/`inf` entry.
        """
        if not self.columns:
            if arrays:
                raise SpecError(f"the loss declares no data columns, but data for {sorted(arrays)}")
            return {}
        names = [name for name, _ in self.columns]
        unknown = sorted(set(arrays) - set(names))
        if unknown:
            raise SpecError(
                f"data given for {unknown[0]!r}, which is not a data column the loss uses; "
                f"the loss uses {names}"
            )
        result: dict[str, np.ndarray] = {}
        for name, shape in self.columns:
            if name not in arrays:
                raise SpecError(f"missing data for the column {name!r}")
            result[name] = column_array(name, shape, arrays[name])
        counts = {name: len(array) for name, array in result.items()}
        if len(set(counts.values())) > 1:
            raise SpecError(f"data columns have different sample counts: {counts}")
        if next(iter(counts.values())) == 0:
            raise SpecError("the data has no samples")
        return result

    def split_parameters(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat parameter vector into arrays named and shaped as declared."""
        result, offset = {}, 0
        for name, shape in self.parameters:
            size = math.prod(shape)
            result[name] = vector[offset : offset + size].reshape(shape)
            offset += size
        return result

    def join_parameters(self, values: dict[str, Any]) -> np.ndarray:
        """Flatten named parameter arrays into one vector; the inverse of `split_parameters`."""
        missing = [name for name, _ in self.parameters if name not in values]
        if missing:
            raise SpecError(f"no value given for the parameter {missing[0]!r}")
        parts = []
        for name, shape in self.parameters:
            value = np.asarray(values[name], dtype=np.float64)
            if value.size != math.prod(shape):
                raise SpecError(
                    f"value of {name!r} has {value.size} entries, "
                    f"expected {math.prod(shape)} for shape {shape}"
                )
            parts.append(value.ravel())
        return np.concatenate(parts)

    def field_names(self) -> list[str]:
        """Names of the data fields in column order: `y` for a scalar, `x[j]` for a vector."""
        names = []
        for name, shape in self.columns:
            if shape == ():
                names.append(name)
            else:
                names.extend(f"{name}[{j}]" for j in range(math.prod(shape)))
        return names

    def read_data(self, path: Path) -> dict[str, np.ndarray]:
        """Read data columns from `.npz`, `.npy` or `.csv` and check them.

        - `.npz`: one array per column, named like the column.
        - `.npy`: one 2-D array with a row per sample and the fields of `field_names()` as
          its columns, in that order.
        - `.csv`: a header row naming the fields of `field_names()`, in any order.
        """
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"data file not found: {path}")
        if path.suffix == ".npz":
            arrays = _read_npz(path)
        elif path.suffix == ".npy":
            arrays = self._split_fields(_read_npy(path), path)
        elif path.suffix == ".csv":
            try:
                arrays = self._read_csv(path)
            except UnicodeDecodeError as error:
                raise SpecError(f"{path} is not UTF-8 text: {error}") from error
        else:
            raise SpecError(f"unsupported data file {path}: use .npz, .npy or .csv")
        return self.validate_data(arrays)

    def _split_fields(self, table: np.ndarray, path: Path) -> dict[str, np.ndarray]:
        fields = self.field_names()
        if table.ndim != 2 or table.shape[1] != len(fields):
            raise SpecError(
                f"{path} contains an array of shape {table.shape}; expected (n_samples, "
                f"{len(fields)}) with the columns {', '.join(fields)}"
            )
        result, offset = {}, 0
        for name, shape in self.columns:
            size = math.prod(shape)
            block = table[:, offset : offset + size]
            result[name] = block[:, 0] if shape == () else block
            offset += size
        return result

    def _read_csv(self, path: Path) -> dict[str, np.ndarray]:
        # utf-8-sig drops the byte-order mark that spreadsheet programs write.
        with path.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)
            header = next(reader, None)
            if header is None:
                raise SpecError(f"{path} is empty; it needs a header row naming the columns")
            values = []
            for row in reader:
                if len(row) != len(header):
                    raise SpecError(
                        f"{path}, line {reader.line_num}: {len(row)} fields, but the header has "
                        f"{len(header)}"
                    )
                try:
                    values.append([float(v) for v in row])
                except ValueError as error:
                    raise SpecError(f"{path}, line {reader.line_num}: {error}") from error
        rows = np.array(values, dtype=np.float64).reshape(len(values), len(header))
        position: dict[str, int] = {}
        for index, name in enumerate(header):
            field = name.strip()
            if field in position:
                raise SpecError(
                    f"{path}: the header names the field {field!r} twice, in columns "
                    f"{position[field] + 1} and {index + 1}; keep one"
                )
            position[field] = index
        unused = sorted(set(position) - set(self.field_names()))
        if unused:
            logging.getLogger("dgcodegen").warning(
                "%s: ignoring %d field(s) the problem does not use: %s",
                path,
                len(unused),
                ", ".join(unused[:5]) + (", ..." if len(unused) > 5 else ""),
            )
        missing = [f for f in self.field_names() if f not in position]
        if missing:
            column = missing[0].split("[")[0]
            raise SpecError(
                f"{path} has no field {missing[0]!r} for the column {column!r}; its header "
                f"needs the fields {', '.join(self.field_names())}"
            )
        return self._split_fields(rows[:, [position[f] for f in self.field_names()]], path)


def column_array(name: str, shape: Shape, values: Any) -> np.ndarray:
    """Return the data of one column as a C-contiguous (n_samples, size) float64 array.

    Raises:
        SpecError: when the values are not numeric, have the wrong shape or are not finite.
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise SpecError(f"data for {name!r} is not numeric: {error}") from error
    size = math.prod(shape)
    if shape == () and array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 + len(shape) or array.shape[1:] != shape:
        want = "(n_samples,)" if shape == () else f"(n_samples, {shape[0]})"
        entries = "one entry" if shape == () else f"{shape[0]} entries"
        raise SpecError(
            f"data for {name!r} has shape {array.shape}, expected {want}: the spec declares "
            f"the column {name!r} with {entries} per sample"
        )
    bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), size)).all(axis=1))
    if bad.size:
        raise SpecError(
            f"data for {name!r} contains nan or inf in {bad.size} sample(s), "
            f"first at row {bad[0]}; remove or impute those rows"
        )
    return np.ascontiguousarray(array.reshape(len(array), size))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise SpecError(
            f"cannot read {path} as an .npz archive of numeric arrays: {error}; "
            "write it with numpy.savez(path, name=array, ...)"
        ) from error


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise SpecError(
            f"cannot read {path} as an .npy array of numbers: {error}; "
            "write it with numpy.save(path, table)"
        ) from error
