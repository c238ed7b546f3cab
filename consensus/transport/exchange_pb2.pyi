from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Purpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PURPOSE_UNSPECIFIED: _ClassVar[Purpose]
    PURPOSE_SWAP: _ClassVar[Purpose]
    PURPOSE_MODEL: _ClassVar[Purpose]
    PURPOSE_METRICS: _ClassVar[Purpose]
PURPOSE_UNSPECIFIED: Purpose
PURPOSE_SWAP: Purpose
PURPOSE_MODEL: Purpose
PURPOSE_METRICS: Purpose

class Header(_message.Message):
    __slots__ = ("protocol_version", "sender", "edge", "method", "purpose", "total_bytes", "sha256", "withheld", "nonce")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    sender: str
    edge: str
    method: str
    purpose: Purpose
    total_bytes: int
    sha256: bytes
    withheld: bool
    nonce: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., sender: _Optional[str] = ..., edge: _Optional[str] = ..., method: _Optional[str] = ..., purpose: _Optional[_Union[Purpose, str]] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ..., withheld: _Optional[bool] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class IdentityProof(_message.Message):
    __slots__ = ("certificate", "signature")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    certificate: bytes
    signature: bytes
    def __init__(self, certificate: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("header", "data", "proof")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    header: Header
    data: bytes
    proof: IdentityProof
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., data: _Optional[bytes] = ..., proof: _Optional[_Union[IdentityProof, _Mapping]] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("sender", "method", "nonce", "protocol_version")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    sender: str
    method: str
    nonce: bytes
    protocol_version: int
    def __init__(self, sender: _Optional[str] = ..., method: _Optional[str] = ..., nonce: _Optional[bytes] = ..., protocol_version: _Optional[int] = ...) -> None: ...
