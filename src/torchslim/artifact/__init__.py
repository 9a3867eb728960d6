"""The compressed artifact: per-tensor encoded payload + a compact manifest, written atomically, never pickled."""

from torchslim.artifact._format import (ARTIFACT_VERSION, ArtifactError, artifact_bytes, load_artifact, load_state,
                                        read_manifest, save_artifact, update_manifest, write_bytes_atomic)
from torchslim.artifact._inspect import describe_artifact

__all__ = ["ARTIFACT_VERSION", "ArtifactError", "artifact_bytes", "describe_artifact", "load_artifact", "load_state",
           "read_manifest", "save_artifact", "update_manifest", "write_bytes_atomic"]
