"""The compressed artifact: per-tensor encoded payload + a compact manifest, written atomically, never pickled;
optionally signed."""

from torchslim.artifact._atomic import fresh_dir, publish, write_bytes_atomic
from torchslim.artifact._format import (ARTIFACT_VERSION, artifact_bytes, artifact_digest, artifact_size, load_state,
                                        read_manifest, save_artifact, stored_files, update_manifest)
from torchslim.artifact._inspect import describe_artifact
from torchslim.artifact._rebuild import load_artifact
from torchslim.artifact._signing import check_signing_key, sign_artifact, verify_artifact
from torchslim.artifact._trust import SIGNATURE, ArtifactError

__all__ = ["ARTIFACT_VERSION", "ArtifactError", "SIGNATURE", "artifact_bytes", "artifact_digest", "artifact_size",
           "check_signing_key", "describe_artifact", "fresh_dir", "load_artifact", "load_state", "publish",
           "read_manifest", "save_artifact", "sign_artifact", "stored_files", "update_manifest", "verify_artifact",
           "write_bytes_atomic"]
