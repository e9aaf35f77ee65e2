//! Status code types and the status codes this implementation produces or recognizes (NVMe
//! Base Specification, "Status Field Definition"; NVMe over Fabrics for the Fabrics codes).

/// Status Code Types.
pub mod sct {
    pub const GENERIC: u8 = 0;
    pub const COMMAND_SPECIFIC: u8 = 1;
    pub const MEDIA: u8 = 2;
    pub const PATH: u8 = 3;
}

/// Generic command status (SCT 0).
pub mod generic {
    pub const SUCCESS: u8 = 0x00;
    pub const INVALID_OPCODE: u8 = 0x01;
    pub const INVALID_FIELD: u8 = 0x02;
    pub const COMMAND_ID_CONFLICT: u8 = 0x03;
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    pub const INTERNAL_ERROR: u8 = 0x06;
    pub const ABORTED_BY_REQUEST: u8 = 0x07;
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    pub const INVALID_NAMESPACE_OR_FORMAT: u8 = 0x0B;
    pub const COMMAND_SEQUENCE_ERROR: u8 = 0x0C;
    pub const INVALID_SGL_SEGMENT_DESCRIPTOR: u8 = 0x0D;
    pub const DATA_SGL_LENGTH_INVALID: u8 = 0x0F;
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u8 = 0x11;
    pub const SGL_OFFSET_INVALID: u8 = 0x16;
    pub const KEEP_ALIVE_TIMEOUT_EXPIRED: u8 = 0x19;
    pub const KEEP_ALIVE_TIMEOUT_INVALID: u8 = 0x1A;
    pub const NAMESPACE_WRITE_PROTECTED: u8 = 0x20;
    pub const COMMAND_INTERRUPTED: u8 = 0x21;
    pub const TRANSIENT_TRANSPORT_ERROR: u8 = 0x22;
    /// NVM command set: LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    pub const NAMESPACE_NOT_READY: u8 = 0x82;
}

/// Command-specific status (SCT 1).
pub mod command_specific {
    pub const INVALID_QUEUE_IDENTIFIER: u8 = 0x01;
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    pub const ABORT_COMMAND_LIMIT_EXCEEDED: u8 = 0x03;
    pub const ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED: u8 = 0x05;
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    pub const FEATURE_NOT_SAVEABLE: u8 = 0x0D;
    pub const FEATURE_NOT_CHANGEABLE: u8 = 0x0E;
    /// Fabrics: Connect Incompatible Format.
    pub const CONNECT_INCOMPATIBLE_FORMAT: u8 = 0x80;
    pub const CONNECT_CONTROLLER_BUSY: u8 = 0x81;
    /// Fabrics: Connect Invalid Parameters (CQE dword 0 holds IATTR/IPO).
    pub const CONNECT_INVALID_PARAMETERS: u8 = 0x82;
    pub const CONNECT_RESTART_DISCOVERY: u8 = 0x83;
    pub const CONNECT_INVALID_HOST: u8 = 0x84;
    /// Fabrics: Disconnect submitted on a queue it does not apply to (the Admin Queue).
    pub const INVALID_QUEUE_TYPE: u8 = 0x85;
    pub const DISCOVER_RESTART: u8 = 0x90;
    pub const AUTHENTICATION_REQUIRED: u8 = 0x91;
}

/// Media and data integrity errors (SCT 2).
pub mod media {
    pub const WRITE_FAULT: u8 = 0x80;
    pub const UNRECOVERED_READ_ERROR: u8 = 0x81;
}

/// A short name for a status, for messages.
pub fn name(sct_value: u8, sc: u8) -> &'static str {
    match (sct_value, sc) {
        (sct::GENERIC, generic::SUCCESS) => "success",
        (sct::GENERIC, generic::INVALID_OPCODE) => "invalid command opcode",
        (sct::GENERIC, generic::INVALID_FIELD) => "invalid field in command",
        (sct::GENERIC, generic::COMMAND_ID_CONFLICT) => "command ID conflict",
        (sct::GENERIC, generic::DATA_TRANSFER_ERROR) => "data transfer error",
        (sct::GENERIC, generic::INTERNAL_ERROR) => "internal error",
        (sct::GENERIC, generic::ABORTED_BY_REQUEST) => "command abort requested",
        (sct::GENERIC, generic::ABORTED_SQ_DELETION) => "aborted: SQ deletion",
        (sct::GENERIC, generic::INVALID_NAMESPACE_OR_FORMAT) => "invalid namespace or format",
        (sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR) => "command sequence error",
        (sct::GENERIC, generic::INVALID_SGL_SEGMENT_DESCRIPTOR) => "invalid SGL segment descriptor",
        (sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID) => "data SGL length invalid",
        (sct::GENERIC, generic::SGL_DESCRIPTOR_TYPE_INVALID) => "SGL descriptor type invalid",
        (sct::GENERIC, generic::SGL_OFFSET_INVALID) => "SGL offset invalid",
        (sct::GENERIC, generic::KEEP_ALIVE_TIMEOUT_EXPIRED) => "keep alive timeout expired",
        (sct::GENERIC, generic::KEEP_ALIVE_TIMEOUT_INVALID) => "keep alive timeout invalid",
        (sct::GENERIC, generic::NAMESPACE_WRITE_PROTECTED) => "namespace is write protected",
        (sct::GENERIC, generic::COMMAND_INTERRUPTED) => "command interrupted",
        (sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR) => "transient transport error",
        (sct::GENERIC, generic::LBA_OUT_OF_RANGE) => "LBA out of range",
        (sct::GENERIC, generic::CAPACITY_EXCEEDED) => "capacity exceeded",
        (sct::GENERIC, generic::NAMESPACE_NOT_READY) => "namespace not ready",
        (sct::COMMAND_SPECIFIC, command_specific::INVALID_QUEUE_IDENTIFIER) => "invalid queue identifier",
        (sct::COMMAND_SPECIFIC, command_specific::INVALID_QUEUE_SIZE) => "invalid queue size",
        (sct::COMMAND_SPECIFIC, command_specific::ABORT_COMMAND_LIMIT_EXCEEDED) => "abort command limit exceeded",
        (sct::COMMAND_SPECIFIC, command_specific::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED) => {
            "asynchronous event request limit exceeded"
        }
        (sct::COMMAND_SPECIFIC, command_specific::INVALID_LOG_PAGE) => "invalid log page",
        (sct::COMMAND_SPECIFIC, command_specific::FEATURE_NOT_SAVEABLE) => "feature identifier not saveable",
        (sct::COMMAND_SPECIFIC, command_specific::FEATURE_NOT_CHANGEABLE) => "feature not changeable",
        (sct::COMMAND_SPECIFIC, command_specific::CONNECT_INCOMPATIBLE_FORMAT) => "connect: incompatible format",
        (sct::COMMAND_SPECIFIC, command_specific::CONNECT_CONTROLLER_BUSY) => "connect: controller busy",
        (sct::COMMAND_SPECIFIC, command_specific::CONNECT_INVALID_PARAMETERS) => "connect: invalid parameters",
        (sct::COMMAND_SPECIFIC, command_specific::CONNECT_RESTART_DISCOVERY) => "connect: restart discovery",
        (sct::COMMAND_SPECIFIC, command_specific::CONNECT_INVALID_HOST) => "connect: invalid host",
        (sct::COMMAND_SPECIFIC, command_specific::INVALID_QUEUE_TYPE) => "invalid queue type",
        (sct::COMMAND_SPECIFIC, command_specific::DISCOVER_RESTART) => "discover restart",
        (sct::COMMAND_SPECIFIC, command_specific::AUTHENTICATION_REQUIRED) => "authentication required",
        (sct::MEDIA, media::WRITE_FAULT) => "write fault",
        (sct::MEDIA, media::UNRECOVERED_READ_ERROR) => "unrecovered read error",
        _ => "other",
    }
}
