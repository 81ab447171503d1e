"""Export a library to a portable directory and import it back; the shipped default library.

A bundle is a directory with two or three files:

* `manifest.json`: the tasks (metadata and provenance), for each task its embeddings (model name
  and hash, method, component, dimension, options, and the array key in vectors.npz), the models,
  the build options, the last build record, the exporting library's version, and the sha256 of
  every other file of the bundle.
* `vectors.npz`: float32 vectors keyed `task/method/component` (prefixed `m<i>/` when a library
  holds several models). The sources' checkpoint-based TaskEmb (`taskemb_ft`) is added to an
  exported bundle by `write_bundle_embeddings` (its options on each task's first component only).
* `maps.npz` (when the library has per-source maps, e.g. ESMs): `task/kind/model/weight_int8`,
  `.../weight_scale` and `.../weight_diagonal` (`embeddings.esm.quantise_rows`: the diagonal in fp16,
  the other entries symmetric int8 with one fp16 scale per row: half the bytes of fp16, so all 20
  ESMs fit the shipped library's 5 MB; rankings measured unchanged, `bench/esm_storage.py`) and
  fp16 `.../bias`, described under `maps` in the manifest (model, checkpoint, fit quality, `encoding`).
  Bundles written before that hold an fp16 `.../weight` instead and are read as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np

from embeddings.result import EmbeddingResult
from library.build import library_options, taskrank_version
from library.errors import LibraryError
from library.store import LibraryStore

BUNDLE_FORMAT = "taskrank-library"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
VECTORS = "vectors.npz"
MAPS = "maps.npz"
MAP_KINDS = ("esm",)
SHIPPED_VARIANT = "taskemb_ft"  # library-side vectors added to a bundle after its export (write_bundle_embeddings)
MAP_ENCODING = "int8_row"  # maps.npz weights: int8 codes, an fp16 scale per row, fp16 diagonal (older: fp16)


def default_library_path() -> Path:
    """The library shipped inside the package (package data `library/default/*`)."""
    return Path(__file__).resolve().parent / "default"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _array_key(prefix: str, task: str, method: str, component: str, taken: set[str]) -> str:
    key = f"{prefix}{task}/{method}/{component}"
    base, n = key, 1
    while key in taken:  # only possible with odd task names; the manifest names the key anyway
        n += 1
        key = f"{base}#{n}"
    taken.add(key)
    return key


@dataclass
class ExportReport:
    path: str
    tasks: int
    vectors: int
    bytes: int
    library_version: str


def export_library(store: LibraryStore, path: str | Path) -> ExportReport:
    """Write the whole library to directory `path` (created; existing bundle files are overwritten)."""
    path = Path(path)
    tasks = store.list_tasks()
    if not tasks:
        raise LibraryError("the library is empty: nothing to export")
    path.mkdir(parents=True, exist_ok=True)
    version = store.version()
    models = sorted({(k.model_name, k.model_hash) for k in store.keys()})
    prefixes = {m: (f"m{i}/" if len(models) > 1 else "") for i, m in enumerate(models)}
    arrays: dict[str, np.ndarray] = {}
    taken: set[str] = set()
    entries = []
    for task in tasks:
        embeddings = []
        for e in store.task_embeddings(task.id):
            key = _array_key(prefixes[(e.model_name, e.model_hash)], task.name, e.method, e.component, taken)
            arrays[key] = e.vector.astype("<f4")
            embeddings.append(
                {
                    "model_name": e.model_name,
                    "model_hash": e.model_hash,
                    "method": e.method,
                    "component": e.component,
                    "dim": int(e.vector.shape[0]),
                    "array": key,
                    "options": e.options,
                }
            )
        entries.append(
            {
                "name": task.name,
                "task_type": task.task_type,
                "description": task.description,
                "num_train": task.num_train,
                "num_dev": task.num_dev,
                "data_hash": task.data_hash,
                "provenance": task.provenance,
                "library_version": task.library_version,
                "embeddings": embeddings,
            }
        )
    vectors_path = path / VECTORS
    _atomic(vectors_path, lambda fh: np.savez(fh, **cast(dict[str, Any], arrays)))
    map_entries, map_arrays = _export_maps(store)
    files = {VECTORS: _sha256(vectors_path)}
    if map_arrays:
        _atomic(path / MAPS, lambda fh: np.savez(fh, **cast(dict[str, Any], map_arrays)))
        files[MAPS] = _sha256(path / MAPS)
    elif (path / MAPS).exists():
        (path / MAPS).unlink()
    options = library_options(store)
    builds = [b for b in store.builds() if b.get("kind") == "build"]
    if not builds:  # a store that imported its library: the bundle's own build record
        builds = [b["build"] for b in store.builds() if b.get("kind") == "import" and b.get("build")]
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "library_version": version,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "taskrank_version": taskrank_version(),
        "models": [{"name": n, "hash": h} for n, h in models],
        "options": options.identity() if options is not None else None,
        "build": _summarise_build(builds[-1]) if builds else None,
        "tasks": entries,
        "maps": map_entries,
        "files": files,
    }
    text = json.dumps(manifest, indent=1, sort_keys=False, ensure_ascii=False) + "\n"
    _atomic(path / MANIFEST, lambda fh: fh.write(text.encode("utf-8")))
    size = sum((path / f).stat().st_size for f in (MANIFEST, *files))
    return ExportReport(str(path), len(entries), len(arrays), size, version)


def _export_maps(store: LibraryStore) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    from embeddings.esm import quantise_rows

    entries, arrays = [], {}
    for kind in MAP_KINDS:
        for m in store.source_maps(kind):
            key = f"{m.task_name}/{kind}/{m.model_hash}"
            for part, array in quantise_rows(m.weight).items():
                arrays[f"{key}/{part}"] = array.astype(array.dtype.newbyteorder("<"))
            arrays[f"{key}/bias"] = m.bias.astype("<f2")
            entries.append({"task": m.task_name, "kind": kind, "model_name": m.model_name,
                            "model_hash": m.model_hash, "checkpoint": m.checkpoint, "array": key,
                            "encoding": MAP_ENCODING, "info": m.info})
    return entries, arrays


def _map_weight(arrays: Any, key: str) -> np.ndarray:
    """A map's weight from maps.npz: int8 codes and row scales, or an older bundle's fp16 weight."""
    from embeddings.esm import INT8_KEYS, dequantise_rows

    if f"{key}/weight" in arrays.files:
        return np.asarray(arrays[f"{key}/weight"], dtype=np.float32)
    return dequantise_rows({part: arrays[f"{key}/{part}"] for part in INT8_KEYS if f"{key}/{part}" in arrays.files})


def write_bundle_maps(store: LibraryStore, path: str | Path) -> int:
    """Put the store's per-source maps into an existing bundle (its tasks and vectors untouched): how
    ESMs fitted after a library was exported are shipped. Returns the number of maps written."""
    from embeddings.esm import INT8_KEYS

    path = Path(path)
    manifest = read_manifest(path)
    shipped = {t["name"]: t.get("data_hash") for t in manifest.get("tasks") or []}
    entries, arrays = _export_maps(store)
    tasks = {t.name: t for t in store.list_tasks()}
    keep = [e for e in entries if e["task"] in shipped and tasks[e["task"]].data_hash == shipped[e["task"]]]
    keys = {f"{e['array']}/{part}" for e in keep for part in (*INT8_KEYS, "bias")}
    files = dict(manifest.get("files") or {})
    if keep:
        _atomic(path / MAPS, lambda fh: np.savez(fh, **cast(dict[str, Any], {k: v for k, v in arrays.items() if k in keys})))
        files[MAPS] = _sha256(path / MAPS)
    manifest["maps"] = keep
    manifest["files"] = files
    text = json.dumps(manifest, indent=1, sort_keys=False, ensure_ascii=False) + "\n"
    _atomic(path / MANIFEST, lambda fh: fh.write(text.encode("utf-8")))
    return len(keep)


def import_maps(store: LibraryStore, path: str | Path, manifest: dict[str, Any] | None = None) -> list[str]:
    """The bundle's per-source maps for tasks the store has with the same data; returns the tasks given maps.

    A map is imported only where the store has none of that kind and model for the task, so a map the
    operator built is never overwritten by a shipped one.
    """
    path = Path(path)
    manifest = manifest if manifest is not None else read_manifest(path)
    entries = manifest.get("maps") or []
    if not entries or not (path / MAPS).is_file():
        return []
    tasks = {t["name"]: t for t in manifest.get("tasks") or []}
    models = {k.model_hash for k in store.keys()}  # a map of another model than the library's is no use
    added = []
    with np.load(path / MAPS, allow_pickle=False) as arrays:
        for entry in entries:
            if entry["model_hash"] not in models:
                continue
            task = store.get_task(entry["task"])
            shipped = tasks.get(entry["task"])
            if task is None or shipped is None or task.data_hash != shipped.get("data_hash"):
                continue
            have = {m.task_id for m in store.source_maps(entry["kind"], entry["model_hash"])}
            if task.id in have:
                continue
            store.put_source_map(task.id, entry["kind"], entry["model_name"], entry["model_hash"],
                                 entry["checkpoint"], _map_weight(arrays, entry["array"]),
                                 arrays[f"{entry['array']}/bias"], entry.get("info") or {})
            added.append(entry["task"])
    return added


def write_bundle_embeddings(store: LibraryStore, path: str | Path, method: str) -> list[str]:
    """Put the store's `method` vectors into an existing bundle (every other vector untouched): how the
    sources' checkpoint-based TaskEmb (`taskemb_ft`), computed after a library was exported, is shipped.

    Only tasks the bundle has with the same data get them; the bundle's previous `method` vectors are
    replaced. The options (the same for every component of one task's embedding) are written on its
    first component's entry only, which is the one an import reads (`_results`): a third of the size.
    Returns the tasks written.
    """
    path = Path(path)
    manifest = read_manifest(path)
    tasks = {t.name: t for t in store.list_tasks()}
    models = sorted({(m["name"], m["hash"]) for m in manifest.get("models") or []})
    prefixes = {m: (f"m{i}/" if len(models) > 1 else "") for i, m in enumerate(models)}
    written = []
    with np.load(path / VECTORS, allow_pickle=False) as old:
        arrays = {k: old[k] for k in old.files}
    for entry in manifest.get("tasks") or []:
        for e in entry["embeddings"]:
            if e["method"] == method:
                arrays.pop(e["array"], None)
        entry["embeddings"] = [e for e in entry["embeddings"] if e["method"] != method]
        task = tasks.get(entry["name"])
        if task is None or task.data_hash != entry.get("data_hash"):
            continue
        stored = [e for e in store.task_embeddings(task.id)
                  if e.method == method and (e.model_name, e.model_hash) in prefixes]
        taken = set(arrays)
        for i, e in enumerate(stored):
            key = _array_key(prefixes[(e.model_name, e.model_hash)], task.name, e.method, e.component, taken)
            arrays[key] = e.vector.astype("<f4")
            entry["embeddings"].append({"model_name": e.model_name, "model_hash": e.model_hash, "method": e.method,
                                        "component": e.component, "dim": int(e.vector.shape[0]), "array": key,
                                        **({"options": e.options} if i == 0 else {})})
        if stored:
            written.append(task.name)
    _atomic(path / VECTORS, lambda fh: np.savez(fh, **cast(dict[str, Any], arrays)))
    manifest["files"] = {**(manifest.get("files") or {}), VECTORS: _sha256(path / VECTORS)}
    text = json.dumps(manifest, indent=1, sort_keys=False, ensure_ascii=False) + "\n"
    _atomic(path / MANIFEST, lambda fh: fh.write(text.encode("utf-8")))
    return written


def import_method_embeddings(store: LibraryStore, path: str | Path, method: str,
                             manifest: dict[str, Any] | None = None) -> list[str]:
    """The bundle's `method` vectors for tasks the store has with the same data and no such vectors yet;
    returns the tasks given them. How a store that imported the library before `taskemb_ft` shipped gets
    it; vectors the operator built are never overwritten."""
    path = Path(path)
    manifest = manifest if manifest is not None else read_manifest(path)
    models = {k.model_hash for k in store.keys()}
    added = []
    with np.load(path / VECTORS, allow_pickle=False) as arrays:
        for entry in manifest.get("tasks") or []:
            if not any(e["method"] == method and e["model_hash"] in models for e in entry["embeddings"]):
                continue
            task = store.get_task(entry["name"])
            if task is None or task.data_hash != entry.get("data_hash"):
                continue
            if any(e.method == method for e in store.task_embeddings(task.id)):
                continue
            part = {**entry, "embeddings": [e for e in entry["embeddings"]
                                            if e["method"] == method and e["model_hash"] in models]}
            for result in _results(part, arrays):
                store.add_embedding(task.id, result)
            added.append(task.name)
    return added


def _summarise_build(build: dict[str, Any]) -> dict[str, Any]:
    """The build record without the data_dir (a path on the builder's machine)."""
    return {k: v for k, v in build.items() if k not in ("data_dir", "id")}


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; bundles are shared (package data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -------------------------------------------------------------------------------------------------
# Import
# -------------------------------------------------------------------------------------------------


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The bundle's manifest, checked for format and file checksums."""
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LibraryError(f"{path} is not a library bundle: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise LibraryError(f"cannot read {manifest_path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise LibraryError(f"{manifest_path} is not a taskrank library manifest")
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise LibraryError(
            f"{manifest_path} has bundle format {manifest.get('format_version')!r}; this taskrank reads {BUNDLE_VERSION}"
        )
    for name, expected in (manifest.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            raise LibraryError(f"bundle {path} is missing {name}")
        if _sha256(file) != expected:
            raise LibraryError(
                f"bundle file {file} does not match its sha256 in {MANIFEST} (corrupt or edited)"
            )
    if VECTORS not in (manifest.get("files") or {}):
        raise LibraryError(f"{manifest_path} lists no {VECTORS}")
    return manifest


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    library_version: str = ""
    maps: list[str] = field(default_factory=list)  # tasks that received a per-source map (ESM)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _results(task: dict[str, Any], arrays: Any) -> Iterator[EmbeddingResult]:
    """The task's vectors as one EmbeddingResult per (model, method), ready for `add_embedding`."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for e in task["embeddings"]:
        groups.setdefault((e["model_name"], e["model_hash"], e["method"]), []).append(e)
    for (model_name, model_hash, method), entries in groups.items():
        vectors = {}
        for e in entries:
            if e["array"] not in arrays:
                raise LibraryError(f"bundle has no array {e['array']!r} (task {task['name']})")
            vec = np.asarray(arrays[e["array"]], dtype=np.float32)
            if vec.shape != (int(e["dim"]),):
                raise LibraryError(f"array {e['array']!r} has shape {vec.shape}, manifest says ({e['dim']},)")
            vectors[e["component"]] = vec
        yield EmbeddingResult(
            method=method,
            vectors=vectors,
            model_name=model_name,
            model_hash=model_hash,
            dataset_name=task["name"],
            dataset_hash=task["data_hash"],
            task_type=task["task_type"],
            num_examples=0,
            num_features=0,
            num_tokens=0,
            options=entries[0].get("options") or {},
        )


def _same(existing: Any, task: dict[str, Any], store: LibraryStore) -> bool:
    """Is the stored task the bundle's task (same data, same vectors)?"""
    if existing.data_hash != task["data_hash"] or existing.task_type != task["task_type"]:
        return False
    stored = {(e.model_name, e.model_hash, e.method, e.component) for e in store.task_embeddings(existing.id)}
    wanted = {(e["model_name"], e["model_hash"], e["method"], e["component"]) for e in task["embeddings"]}
    return stored == wanted


def import_library(store: LibraryStore, path: str | Path, replace: bool = False,
                   only: Collection[str] | None = None) -> ImportReport:
    """Add every task of the bundle at `path` to the store (`only`: just the tasks of these names).

    A task already in the store with the same data and embedding keys is skipped; one that differs is
    an error unless `replace`, which replaces it. Conflicts are checked before anything is written.
    """
    path = Path(path)
    manifest = read_manifest(path)
    tasks = manifest.get("tasks") or []
    if not tasks:
        raise LibraryError(f"bundle {path} has no tasks")
    if only is not None:
        tasks = [t for t in tasks if t["name"] in set(only)]
    plan: list[tuple[dict[str, Any], str]] = []
    conflicts = []
    for task in tasks:
        existing = store.get_task(task["name"])
        if existing is None:
            plan.append((task, "add"))
        elif _same(existing, task, store):
            plan.append((task, "skip"))
        elif replace:
            plan.append((task, "replace"))
        else:
            conflicts.append(task["name"])
    if conflicts:
        raise LibraryError(
            f"the library already has different task(s) {', '.join(conflicts)}: remove them or import with --replace"
        )
    replaced_names = {t["name"] for t, action in plan if action == "replace"}
    library = {(k.model_name, k.method, k.component): k.model_hash for k in store.keys()}
    if not replaced_names:
        for task in tasks:
            for e in task["embeddings"]:
                have = library.get((e["model_name"], e["method"], e["component"]))
                if have is not None and have != e["model_hash"]:
                    raise LibraryError(
                        f"the library has {e['model_name']} embeddings with hash {have}, the bundle has "
                        f"{e['model_hash']}: import into an empty library or with --replace"
                    )
    report = ImportReport()
    with np.load(path / VECTORS, allow_pickle=False) as arrays:
        for task, action in plan:
            name = task["name"]
            if action == "skip":
                report.skipped.append(name)
                continue
            results = list(_results(task, arrays))
            if action == "replace":
                store.remove_task(name)
            try:
                added = store.add_task(
                    name,
                    task["task_type"],
                    num_train=int(task["num_train"]),
                    num_dev=task.get("num_dev"),
                    data_hash=task["data_hash"],
                    description=task.get("description", ""),
                    provenance=task.get("provenance") or {},
                )
            except LibraryError:
                # Another process imported the same task meanwhile (e.g. two first runs at once).
                existing = store.get_task(name)
                if existing is not None and _same(existing, task, store):
                    report.skipped.append(name)
                    continue
                raise
            try:
                for result in results:
                    store.add_embedding(added.id, result)
            except BaseException:
                store.remove_task(added.id)
                raise
            (report.replaced if action == "replace" else report.added).append(name)
    report.maps = import_maps(store, path, manifest)
    report.library_version = store.version()
    if report.added or report.replaced:
        store.record_build(
            {
                "kind": "import",
                "source": str(path),
                "bundle_library_version": manifest.get("library_version"),
                "options": manifest.get("options"),
                "build": manifest.get("build"),
                "added": report.added,
                "replaced": report.replaced,
                "skipped": report.skipped,
                "library_version": report.library_version,
                "taskrank_version": taskrank_version(),
            }
        )
    return report


def restore_default_library(store: LibraryStore, path: str | Path | None = None) -> ImportReport:
    """Import again the shipped sources the store is missing (a deleted shipped source comes back).

    Tasks the store has, whether the shipped ones or an operator's of the same name, are left as they are
    and reported as skipped."""
    path = Path(path) if path is not None else default_library_path()
    if not (path / MANIFEST).is_file():
        raise LibraryError(f"no default library ships at {path}")
    shipped = [t["name"] for t in read_manifest(path).get("tasks") or []]
    missing = [name for name in shipped if store.get_task(name) is None]
    if not missing:
        return ImportReport(skipped=shipped, library_version=store.version())
    report = import_library(store, path, only=missing)
    report.skipped = [name for name in shipped if name not in missing]
    return report


def ensure_default_library(store: LibraryStore, path: str | Path | None = None) -> ImportReport | None:
    """Import the shipped default library into an EMPTY store; None when the store has tasks or none ships."""
    path = Path(path) if path is not None else default_library_path()
    if store.list_tasks():
        if (path / MANIFEST).is_file() and (path / MAPS).is_file() and not store.source_maps("esm"):
            import_maps(store, path)  # maps shipped after this store imported the library
        if (path / MANIFEST).is_file() and not any(k.method == SHIPPED_VARIANT for k in store.keys()):
            import_method_embeddings(store, path, SHIPPED_VARIANT)  # shipped after this store's import
        return None
    if not (path / MANIFEST).is_file():
        return None
    return import_library(store, path)
