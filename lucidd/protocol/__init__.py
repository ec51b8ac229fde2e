"""The wire of both sockets (layer 1, DESIGN §6): its messages and its sans-IO codec.

:mod:`~lucidd.protocol.messages` holds the Structs and the limits, :mod:`~lucidd.protocol.codec`
the frame encoder and the incremental decoder. Everything is re-exported here, so
``from lucidd import protocol as p`` and ``p.Chunk``/``p.FrameDecoder`` read as one module.
"""

from lucidd.protocol.codec import (
    ChunkEnd as ChunkEnd,
)
from lucidd.protocol.codec import (
    ChunkStart as ChunkStart,
)
from lucidd.protocol.codec import (
    Event as Event,
)
from lucidd.protocol.codec import (
    FrameDecoder as FrameDecoder,
)
from lucidd.protocol.codec import (
    FrameMessage as FrameMessage,
)
from lucidd.protocol.codec import (
    PayloadData as PayloadData,
)
from lucidd.protocol.codec import (
    control_reply_decoder as control_reply_decoder,
)
from lucidd.protocol.codec import (
    control_request_decoder as control_request_decoder,
)
from lucidd.protocol.codec import (
    data_reply_decoder as data_reply_decoder,
)
from lucidd.protocol.codec import (
    data_request_decoder as data_request_decoder,
)
from lucidd.protocol.codec import (
    encode_frame as encode_frame,
)
from lucidd.protocol.control_messages import (
    MAX_LABEL_SIZE as MAX_LABEL_SIZE,
)
from lucidd.protocol.control_messages import (
    Anchor as Anchor,
)
from lucidd.protocol.control_messages import (
    AnchorReply as AnchorReply,
)
from lucidd.protocol.control_messages import (
    Attestation as Attestation,
)
from lucidd.protocol.control_messages import (
    Check as Check,
)
from lucidd.protocol.control_messages import (
    CheckpointReply as CheckpointReply,
)
from lucidd.protocol.control_messages import (
    CheckReply as CheckReply,
)
from lucidd.protocol.control_messages import (
    ChunkReply as ChunkReply,
)
from lucidd.protocol.control_messages import (
    ConfigReply as ConfigReply,
)
from lucidd.protocol.control_messages import (
    ConsistencyProofReply as ConsistencyProofReply,
)
from lucidd.protocol.control_messages import (
    ControlReply as ControlReply,
)
from lucidd.protocol.control_messages import (
    ControlRequest as ControlRequest,
)
from lucidd.protocol.control_messages import (
    Finalize as Finalize,
)
from lucidd.protocol.control_messages import (
    FinalizeReply as FinalizeReply,
)
from lucidd.protocol.control_messages import (
    GetCheckpoint as GetCheckpoint,
)
from lucidd.protocol.control_messages import (
    GetConfig as GetConfig,
)
from lucidd.protocol.control_messages import (
    GetConsistencyProof as GetConsistencyProof,
)
from lucidd.protocol.control_messages import (
    GetInclusionProof as GetInclusionProof,
)
from lucidd.protocol.control_messages import (
    GetReceipt as GetReceipt,
)
from lucidd.protocol.control_messages import (
    GetRoot as GetRoot,
)
from lucidd.protocol.control_messages import (
    GetSigningKey as GetSigningKey,
)
from lucidd.protocol.control_messages import (
    Health as Health,
)
from lucidd.protocol.control_messages import (
    HealthReply as HealthReply,
)
from lucidd.protocol.control_messages import (
    Histogram as Histogram,
)
from lucidd.protocol.control_messages import (
    InclusionProofReply as InclusionProofReply,
)
from lucidd.protocol.control_messages import (
    KeyInfo as KeyInfo,
)
from lucidd.protocol.control_messages import (
    KeyReply as KeyReply,
)
from lucidd.protocol.control_messages import (
    KeyRequest as KeyRequest,
)
from lucidd.protocol.control_messages import (
    KeysChanged as KeysChanged,
)
from lucidd.protocol.control_messages import (
    KeysReply as KeysReply,
)
from lucidd.protocol.control_messages import (
    ListKeys as ListKeys,
)
from lucidd.protocol.control_messages import (
    ListRemoteSessions as ListRemoteSessions,
)
from lucidd.protocol.control_messages import (
    ListSessions as ListSessions,
)
from lucidd.protocol.control_messages import (
    LoadKeyring as LoadKeyring,
)
from lucidd.protocol.control_messages import (
    Metrics as Metrics,
)
from lucidd.protocol.control_messages import (
    MetricsReply as MetricsReply,
)
from lucidd.protocol.control_messages import (
    MissingKey as MissingKey,
)
from lucidd.protocol.control_messages import (
    OpenSession as OpenSession,
)
from lucidd.protocol.control_messages import (
    ProcessStatus as ProcessStatus,
)
from lucidd.protocol.control_messages import (
    ReadChunk as ReadChunk,
)
from lucidd.protocol.control_messages import (
    ReceiptReply as ReceiptReply,
)
from lucidd.protocol.control_messages import (
    RemoteHost as RemoteHost,
)
from lucidd.protocol.control_messages import (
    RemoteSessionsReply as RemoteSessionsReply,
)
from lucidd.protocol.control_messages import (
    RetireKey as RetireKey,
)
from lucidd.protocol.control_messages import (
    RewrapKeys as RewrapKeys,
)
from lucidd.protocol.control_messages import (
    RootReply as RootReply,
)
from lucidd.protocol.control_messages import (
    RotateKeys as RotateKeys,
)
from lucidd.protocol.control_messages import (
    SessionInfo as SessionInfo,
)
from lucidd.protocol.control_messages import (
    SessionInfoReply as SessionInfoReply,
)
from lucidd.protocol.control_messages import (
    SessionListReply as SessionListReply,
)
from lucidd.protocol.control_messages import (
    SessionOpened as SessionOpened,
)
from lucidd.protocol.control_messages import (
    SessionSummary as SessionSummary,
)
from lucidd.protocol.control_messages import (
    Shred as Shred,
)
from lucidd.protocol.control_messages import (
    ShredReply as ShredReply,
)
from lucidd.protocol.control_messages import (
    SigningKeyReply as SigningKeyReply,
)
from lucidd.protocol.control_messages import (
    check_control_request as check_control_request,
)
from lucidd.protocol.messages import (
    BATCH_FRAME_OVERHEAD as BATCH_FRAME_OVERHEAD,
)
from lucidd.protocol.messages import (
    BATCH_ITEM_MAX_BYTES as BATCH_ITEM_MAX_BYTES,
)
from lucidd.protocol.messages import (
    CONTROL_FRAME_OVERHEAD as CONTROL_FRAME_OVERHEAD,
)
from lucidd.protocol.messages import (
    HASH_SIZE as HASH_SIZE,
)
from lucidd.protocol.messages import (
    LENGTH_PREFIX as LENGTH_PREFIX,
)
from lucidd.protocol.messages import (
    LENGTH_PREFIX_SIZE as LENGTH_PREFIX_SIZE,
)
from lucidd.protocol.messages import (
    MAX_BATCH_ITEMS as MAX_BATCH_ITEMS,
)
from lucidd.protocol.messages import (
    MAX_DATA_HEADER_SIZE as MAX_DATA_HEADER_SIZE,
)
from lucidd.protocol.messages import (
    MAX_INDEX as MAX_INDEX,
)
from lucidd.protocol.messages import (
    MAX_UID as MAX_UID,
)
from lucidd.protocol.messages import (
    SESSION_ID_SIZE as SESSION_ID_SIZE,
)
from lucidd.protocol.messages import (
    Ack as Ack,
)
from lucidd.protocol.messages import (
    ActAs as ActAs,
)
from lucidd.protocol.messages import (
    ActingAs as ActingAs,
)
from lucidd.protocol.messages import (
    Batch as Batch,
)
from lucidd.protocol.messages import (
    Chunk as Chunk,
)
from lucidd.protocol.messages import (
    DataReply as DataReply,
)
from lucidd.protocol.messages import (
    DataRequest as DataRequest,
)
from lucidd.protocol.messages import (
    Error as Error,
)
from lucidd.protocol.messages import (
    MemoryShared as MemoryShared,
)
from lucidd.protocol.messages import (
    Message as Message,
)
from lucidd.protocol.messages import (
    SharedChunk as SharedChunk,
)
from lucidd.protocol.messages import (
    ShareMemory as ShareMemory,
)
from lucidd.protocol.messages import (
    error_reply as error_reply,
)
