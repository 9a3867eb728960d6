"""Helpers for the artifact tests (a module name no other test folder uses)."""

import hashlib
import json


def canonical(data):
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rewrite_manifest(path, edit, *, reseal=True):
    """Edit the compressed manifest inside model.safetensors; ``reseal``: recompute the sha256 before it as
    save_artifact does, so only the content is wrong."""
    import numpy as np
    import zstandard
    from safetensors.numpy import load, save

    from torchslim.artifact._dictionary import MANIFEST_DICTIONARY
    from torchslim.artifact._format import ARTIFACT_VERSION, _seal

    dictionary = zstandard.ZstdCompressionDict(MANIFEST_DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    blob = load((path / "model.safetensors").read_bytes())["artifact"].tobytes()
    digest, blob = blob[:32], blob[32:]
    decoder = zstandard.ZstdDecompressor(dict_data=dictionary).decompressobj()
    manifest = json.loads(decoder.decompress(blob))
    edit(manifest)
    frame = zstandard.ZstdCompressor(level=19, dict_data=dictionary).compress(canonical(manifest))
    blob = frame + decoder.unused_data
    blob = (hashlib.sha256(_seal(ARTIFACT_VERSION) + blob).digest() if reseal else digest) + blob
    (path / "model.safetensors").write_bytes(save({"artifact": np.frombuffer(blob, np.uint8)}))
