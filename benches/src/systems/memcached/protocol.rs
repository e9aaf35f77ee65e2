//! memcached's text protocol, the parts the benchmark uses: `get` and `set` requests and their
//! replies. Sans-IO: requests are encoded into buffers, replies decoded from bytes as they
//! arrive ([`ReplyDecoder`]); nothing here touches a socket.
//!
//! Replies (each line ends with `\r\n`):
//! * to `get`: zero or more `VALUE <key> <flags> <bytes> [<cas>]` lines each followed by
//!   `<bytes>` bytes of data and `\r\n`, then `END`;
//! * to `set`: `STORED`, `NOT_STORED`, `EXISTS` or `NOT_FOUND`;
//! * to anything: `ERROR` (unknown command), `CLIENT_ERROR <message>`, `SERVER_ERROR <message>`.
//!
//! Keys must be 1 to 250 printable characters without spaces; [`key_text`] encodes any binary
//! key of up to 125 bytes as lowercase hex.

/// Longest reply line accepted (memcached's own lines are far shorter).
pub const MAX_LINE: usize = 2048;
/// Largest value accepted in a reply (memcached's item size limit cannot exceed 1 GiB).
pub const MAX_VALUE_LEN: usize = 1 << 30;
/// Longest memcached key, in characters.
pub const MAX_KEY_TEXT: usize = 250;

/// A key memcached cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("empty key")]
    Empty,
    #[error("key of {0} bytes is longer than {max} (its hex form would exceed memcached's 250 characters)", max = MAX_KEY_TEXT / 2)]
    TooLong(usize),
}

/// The memcached key of a binary key: its bytes in lowercase hex (a 16-byte key gives 32
/// characters).
pub fn key_text(key: &[u8]) -> Result<String, KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() * 2 > MAX_KEY_TEXT {
        return Err(KeyError::TooLong(key.len()));
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(key.len() * 2);
    for b in key {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    Ok(s)
}

/// Appends `get <key>\r\n`.
pub fn encode_get(key: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"get ");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `set <key> <flags> <exptime> <bytes>\r\n<value>\r\n`.
pub fn encode_set(key: &str, flags: u32, exptime: u32, value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("set {key} {flags} {exptime} {}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// One item of a `get` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub flags: u32,
    pub value: Vec<u8>,
    pub cas: Option<u64>,
}

/// A decoded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `VALUE ...`* `END`: the items found (none: a miss).
    Values(Vec<Item>),
    Stored,
    NotStored,
    Exists,
    NotFound,
    /// `ERROR`: the server did not know the command.
    Error,
    /// `CLIENT_ERROR <message>`: the request was malformed.
    ClientError(String),
    /// `SERVER_ERROR <message>`: the server could not serve it (e.g. object too large, out of
    /// memory).
    ServerError(String),
}

impl Reply {
    /// A short description for error messages.
    pub fn describe(&self) -> String {
        match self {
            Reply::Values(items) => format!("{} VALUE item(s)", items.len()),
            Reply::Stored => "STORED".into(),
            Reply::NotStored => "NOT_STORED".into(),
            Reply::Exists => "EXISTS".into(),
            Reply::NotFound => "NOT_FOUND".into(),
            Reply::Error => "ERROR".into(),
            Reply::ClientError(m) => format!("CLIENT_ERROR {m}"),
            Reply::ServerError(m) => format!("SERVER_ERROR {m}"),
        }
    }
}

/// Bytes that are not a reply. The stream cannot be resynchronized after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("unknown reply line {0:?}")]
    UnknownReply(String),
    #[error("malformed VALUE line {0:?}")]
    BadValueLine(String),
    #[error("VALUE of {0} bytes exceeds the maximum of {MAX_VALUE_LEN}")]
    ValueTooLarge(u64),
    #[error("the data of a VALUE is not followed by \\r\\n")]
    BadDataTerminator,
}

/// Shows at most 80 bytes of a line, escaped.
fn excerpt(line: &[u8]) -> String {
    let cut = &line[..line.len().min(80)];
    let mut s: String = cut.escape_ascii().to_string();
    if line.len() > cut.len() {
        s.push_str("...");
    }
    s
}

/// The next `\r\n`-terminated line of `buf` from `at`: `Ok(None)` if it is not complete yet.
fn line_at(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = &buf[at..];
    let window = &rest[..rest.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&rest[..end], at + end + 2))),
        None if rest.len() >= MAX_LINE + 2 => Err(ProtocolError::LineTooLong),
        None => Ok(None),
    }
}

fn message(line: &[u8], prefix: &[u8]) -> Option<String> {
    if line == prefix {
        return Some(String::new());
    }
    let rest = line.strip_prefix(prefix)?.strip_prefix(b" ")?;
    Some(String::from_utf8_lossy(rest).into_owned())
}

/// `VALUE <key> <flags> <bytes> [<cas>]` without the `VALUE ` prefix.
fn value_header(fields: &[u8], line: &[u8]) -> Result<(String, u32, usize, Option<u64>), ProtocolError> {
    let bad = || ProtocolError::BadValueLine(excerpt(line));
    let text = std::str::from_utf8(fields).map_err(|_| bad())?;
    let parts: Vec<&str> = text.split(' ').collect();
    if !(3..=4).contains(&parts.len()) || parts[0].is_empty() {
        return Err(bad());
    }
    let flags = parts[1].parse::<u32>().map_err(|_| bad())?;
    let len = parts[2].parse::<u64>().map_err(|_| bad())?;
    if len > MAX_VALUE_LEN as u64 {
        return Err(ProtocolError::ValueTooLarge(len));
    }
    let cas = parts.get(3).map(|c| c.parse::<u64>().map_err(|_| bad())).transpose()?;
    Ok((parts[0].to_string(), flags, len as usize, cas))
}

/// Decodes one reply from the start of `buf`: `Ok(None)` if more bytes are needed, otherwise
/// the reply and how many bytes it took.
pub fn decode_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let Some((line, mut at)) = line_at(buf, 0)? else { return Ok(None) };
    let simple = match line {
        b"STORED" => Some(Reply::Stored),
        b"NOT_STORED" => Some(Reply::NotStored),
        b"EXISTS" => Some(Reply::Exists),
        b"NOT_FOUND" => Some(Reply::NotFound),
        b"ERROR" => Some(Reply::Error),
        b"END" => Some(Reply::Values(Vec::new())),
        _ => None,
    };
    if let Some(r) = simple {
        return Ok(Some((r, at)));
    }
    if let Some(m) = message(line, b"CLIENT_ERROR") {
        return Ok(Some((Reply::ClientError(m), at)));
    }
    if let Some(m) = message(line, b"SERVER_ERROR") {
        return Ok(Some((Reply::ServerError(m), at)));
    }
    if !line.starts_with(b"VALUE ") {
        return Err(ProtocolError::UnknownReply(excerpt(line)));
    }
    // VALUE items until END.
    let mut items = Vec::new();
    let mut line = line;
    loop {
        if line == b"END" {
            return Ok(Some((Reply::Values(items), at)));
        }
        let Some(fields) = line.strip_prefix(b"VALUE ") else {
            return Err(ProtocolError::UnknownReply(excerpt(line)));
        };
        let (key, flags, len, cas) = value_header(fields, line)?;
        if buf.len() - at < len + 2 {
            return Ok(None);
        }
        if &buf[at + len..at + len + 2] != b"\r\n" {
            return Err(ProtocolError::BadDataTerminator);
        }
        items.push(Item { key, flags, value: buf[at..at + len].to_vec(), cas });
        at += len + 2;
        match line_at(buf, at)? {
            Some((next, after)) => {
                line = next;
                at = after;
            }
            None => return Ok(None),
        }
    }
}

/// Accumulates bytes from a connection and yields complete replies in order.
#[derive(Debug, Default)]
pub struct ReplyDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl ReplyDecoder {
    pub fn new() -> ReplyDecoder {
        ReplyDecoder::default()
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete reply, if any. After an error the decoder is unusable.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ProtocolError> {
        match decode_reply(&self.buf[self.start..])? {
            Some((reply, used)) => {
                self.start += used;
                Ok(Some(reply))
            }
            None => Ok(None),
        }
    }

    /// Bytes received but not yet part of a complete reply.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(key: &str, value: &[u8]) -> Item {
        Item { key: key.into(), flags: 0, value: value.to_vec(), cas: None }
    }

    /// A stream of replies of every kind, and what it decodes to.
    fn sample() -> (Vec<u8>, Vec<Reply>) {
        let bytes = b"STORED\r\n\
            END\r\n\
            VALUE 6b6579 0 5\r\nhello\r\nEND\r\n\
            VALUE a 7 0 99\r\n\r\nVALUE b 0 4\r\n\r\n\r\n\r\nEND\r\n\
            NOT_STORED\r\nEXISTS\r\nNOT_FOUND\r\nERROR\r\n\
            CLIENT_ERROR bad data chunk\r\nSERVER_ERROR object too large for cache\r\nSERVER_ERROR\r\n"
            .to_vec();
        let replies = vec![
            Reply::Stored,
            Reply::Values(vec![]),
            Reply::Values(vec![item("6b6579", b"hello")]),
            Reply::Values(vec![
                Item { key: "a".into(), flags: 7, value: vec![], cas: Some(99) },
                item("b", b"\r\n\r\n"),
            ]),
            Reply::NotStored,
            Reply::Exists,
            Reply::NotFound,
            Reply::Error,
            Reply::ClientError("bad data chunk".into()),
            Reply::ServerError("object too large for cache".into()),
            Reply::ServerError(String::new()),
        ];
        (bytes, replies)
    }

    fn decode_all(d: &mut ReplyDecoder, out: &mut Vec<Reply>) -> Result<(), ProtocolError> {
        while let Some(r) = d.next_reply()? {
            out.push(r);
        }
        Ok(())
    }

    #[test]
    fn every_reply_kind_decodes() {
        let (bytes, want) = sample();
        let mut d = ReplyDecoder::new();
        d.feed(&bytes);
        let mut got = Vec::new();
        decode_all(&mut d, &mut got).unwrap();
        assert_eq!(got, want);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn split_at_every_point_gives_the_same_replies() {
        let (bytes, want) = sample();
        for cut in 0..=bytes.len() {
            let mut d = ReplyDecoder::new();
            let mut got = Vec::new();
            d.feed(&bytes[..cut]);
            decode_all(&mut d, &mut got).unwrap();
            d.feed(&bytes[cut..]);
            decode_all(&mut d, &mut got).unwrap();
            assert_eq!(got, want, "split at {cut}");
        }
        // And byte by byte.
        let mut d = ReplyDecoder::new();
        let mut got = Vec::new();
        for b in &bytes {
            d.feed(std::slice::from_ref(b));
            decode_all(&mut d, &mut got).unwrap();
        }
        assert_eq!(got, want);
    }

    #[test]
    fn malformed_replies_are_errors() {
        let err = |b: &[u8]| decode_reply(b).unwrap_err();
        assert!(matches!(err(b"HELLO\r\n"), ProtocolError::UnknownReply(_)));
        assert!(matches!(err(b"STORED \r\n"), ProtocolError::UnknownReply(_)));
        assert!(matches!(err(b"VALUE k 0\r\n"), ProtocolError::BadValueLine(_)));
        assert!(matches!(err(b"VALUE k x 1\r\n"), ProtocolError::BadValueLine(_)));
        assert!(matches!(err(b"VALUE k 0 -1\r\n"), ProtocolError::BadValueLine(_)));
        assert!(matches!(err(b"VALUE  0 1\r\n"), ProtocolError::BadValueLine(_)));
        assert!(matches!(err(b"VALUE k 0 1 2 3\r\n"), ProtocolError::BadValueLine(_)));
        assert!(matches!(err(b"VALUE k 0 99999999999\r\n"), ProtocolError::ValueTooLarge(99_999_999_999)));
        assert_eq!(err(b"VALUE k 0 2\r\nabcd\r\n"), ProtocolError::BadDataTerminator);
        assert!(matches!(err(b"VALUE k 0 1\r\na\r\nSTORED\r\n"), ProtocolError::UnknownReply(_)));
        assert_eq!(err(&[b'x'; MAX_LINE + 2]), ProtocolError::LineTooLong);
        // Incomplete is not an error.
        assert_eq!(decode_reply(b"VALUE k 0 10\r\nabc").unwrap(), None);
        assert_eq!(decode_reply(b"STOR").unwrap(), None);
        assert_eq!(decode_reply(&[b'x'; MAX_LINE]).unwrap(), None);
        assert_eq!(decode_reply(b"VALUE k 0 1\r\na\r\n").unwrap(), None, "END not yet received");
    }

    #[test]
    fn requests_and_keys() {
        let k = key_text(&[0x00, 0xff, 0x1a]).unwrap();
        assert_eq!(k, "00ff1a");
        assert_eq!(key_text(&[7; 16]).unwrap().len(), 32);
        assert_eq!(key_text(b""), Err(KeyError::Empty));
        assert!(key_text(&[0; 125]).is_ok());
        assert_eq!(key_text(&[0; 126]), Err(KeyError::TooLong(126)));
        let mut out = Vec::new();
        encode_get(&k, &mut out);
        encode_set(&k, 0, 0, b"a\r\nb", &mut out);
        assert_eq!(out, b"get 00ff1a\r\nset 00ff1a 0 0 4\r\na\r\nb\r\n");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut d = ReplyDecoder::new();
            d.feed(&bytes);
            while let Ok(Some(_)) = d.next_reply() {}
        }

        /// Bytes that look like replies (built from reply fragments) never panic either, and
        /// decoding them whole or split anywhere agrees.
        #[test]
        fn reply_like_bytes_decode_the_same_however_split(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                &b"VALUE k 0 3\r\n"[..], b"abc", b"\r\n", b"END", b"STORED", b"VALUE", b" ", b"1", b"SERVER_ERROR x",
                b"\r", b"\n", b"VALUE k 0 0 5\r\n"]), 0..30),
            cut in any::<prop::sample::Index>()) {
            let bytes: Vec<u8> = parts.concat();
            let whole = {
                let mut d = ReplyDecoder::new();
                d.feed(&bytes);
                let mut got = Vec::new();
                let r = decode_all(&mut d, &mut got);
                (got, r.err())
            };
            let cut = cut.index(bytes.len() + 1);
            let mut d = ReplyDecoder::new();
            let mut got = Vec::new();
            d.feed(&bytes[..cut]);
            let mut r = decode_all(&mut d, &mut got);
            if r.is_ok() {
                d.feed(&bytes[cut..]);
                r = decode_all(&mut d, &mut got);
            }
            prop_assert_eq!((got, r.err()), whole);
        }
    }
}
