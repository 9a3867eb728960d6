"""The compressed artifact: per-tensor encoded payload + a compact manifest, written atomically, never pickled; optionally signed."""

from torchslim.artifact._format import (ARTIFACT_VERSION, ArtifactError, artifact_bytes, load_artifact, load_state,
                                        read_manifest, save_artifact, update_manifest, write_bytes_atomic)
from torchslim.artifact._inspect import describe_artifact
from torchslim.artifact._signing import SIGNATURE, check_signing_key, sign_artifact, verify_artifact

__all__ = ["ARTIFACT_VERSION", "SIGNATURE", "ArtifactError", "artifact_bytes", "check_signing_key", "describe_artifact",
           "load_artifact", "load_state", "read_manifest", "save_artifact", "sign_artifact", "update_manifest",
           "verify_artifact", "write_bytes_atomic"]
