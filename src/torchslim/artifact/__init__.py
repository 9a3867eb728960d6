"""The compressed artifact: safetensors payload + a compact JSON manifest, written atomically, never pickled."""

from torchslim.artifact._format import (ARTIFACT_VERSION, ArtifactError, load_artifact, read_manifest,
                                        save_artifact, update_manifest, write_bytes_atomic)

__all__ = ["ARTIFACT_VERSION", "ArtifactError", "load_artifact", "read_manifest", "save_artifact",
           "update_manifest", "write_bytes_atomic"]
