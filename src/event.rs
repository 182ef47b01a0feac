//! Decoding the input contract (DESIGN.md § Input) into borrowed, typed events.
//!
//! Decoding borrows from the payload wherever the JSON string has no escapes, keeps up to
//! [`INLINE_CTX`] `ctx` fields inline, and so allocates nothing for a typical event. The
//! payload is checked to be UTF-8 once, as a whole, before parsing (invalid UTF-8 anywhere
//! in it, even inside an ignored field, makes it malformed JSON), so that the parser need
//! not check each string again; a line the scanner's first pass saw to be all ASCII needs
//! no check. Events as producers write them (no escapes, plain numbers, the contract's
//! fields) are read by a scanner that knows their shape (`fast`); every other payload, and
//! so every bad one, goes through serde_json, which reads the same events to the same
//! values. A bad event is a [`DecodeError`] value that names the field and what was wrong;
//! nothing here panics on any input.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use smallvec::SmallVec;

/// `ctx` fields kept inline before spilling to the heap. The contract's events carry five
/// or six; each inline slot adds 56 bytes that every decoded event moves (12 made an
/// event ~700 bytes, and its moves a visible share of decoding).
pub const INLINE_CTX: usize = 8;

/// Default largest accepted event, in bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// One decoded event, borrowing from its payload.
// Returned by value and consumed at once; boxing the impression would allocate per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// An item shown to a user.
    Impression(Impression<'a>),
    /// Feedback on an earlier impression.
    Feedback(Feedback<'a>),
}

impl Event<'_> {
    /// The impression's id, or the id of the impression the feedback answers.
    pub fn id(&self) -> &str {
        match self {
            Event::Impression(i) => &i.id,
            Event::Feedback(f) => &f.id,
        }
    }

    /// Event time in epoch milliseconds.
    pub fn ts(&self) -> i64 {
        match self {
            Event::Impression(i) => i.ts,
            Event::Feedback(f) => f.ts,
        }
    }
}

/// An impression: `{"type":"impression","id","ts","user","item","ctx":{..}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Impression<'a> {
    /// Impression id, answered by feedback events.
    pub id: Cow<'a, str>,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// User id.
    pub user: Cow<'a, str>,
    /// Item id.
    pub item: Cow<'a, str>,
    /// Context fields in payload order.
    pub ctx: SmallVec<[(Cow<'a, str>, CtxValue<'a>); INLINE_CTX]>,
}

impl<'a> Impression<'a> {
    /// The value of context field `name`, if present.
    pub fn ctx_get(&self, name: &str) -> Option<&CtxValue<'a>> {
        self.ctx.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// A context value: strings are categorical, numbers numeric.
#[derive(Debug, Clone, PartialEq)]
pub enum CtxValue<'a> {
    /// A categorical value.
    Str(Cow<'a, str>),
    /// A finite number.
    Num(f64),
}

/// Feedback on an impression.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback<'a> {
    /// The impression answered.
    pub id: Cow<'a, str>,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// What the user did.
    pub kind: FeedbackKind,
}

/// What the user did with an impression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackKind {
    /// A click.
    Click,
    /// A like.
    Like,
    /// A skip after `dwell_ms` milliseconds on screen.
    Skip {
        /// Time on screen before the skip.
        dwell_ms: u32,
    },
}

/// Why an event was rejected. `Display` gives the reason written to the dead-letter record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than the configured limit; not parsed at all.
    #[error("oversized event: {len} bytes, the limit is {limit}")]
    Oversized {
        /// Payload size.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// Not a JSON object.
    #[error("malformed JSON: {detail}")]
    Malformed {
        /// The parser's message.
        detail: String,
    },
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// A field has the wrong JSON type or an unusable value.
    #[error("field `{field}`: {detail}")]
    InvalidField {
        /// The field (`ctx.<name>` for context fields).
        field: String,
        /// What was wrong.
        detail: String,
    },
    /// `type` is not one of impression, click, like, skip.
    #[error("unknown event type {found:?}")]
    UnknownType {
        /// The type found.
        found: String,
    },
}

impl DecodeError {
    /// A short, fixed label for counting rejects by reason.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::Malformed { .. } => "malformed_json",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::UnknownType { .. } => "unknown_type",
        }
    }
}

/// Decodes one payload, rejecting payloads over `max_bytes` without parsing them.
pub fn decode(payload: &[u8], max_bytes: usize) -> Result<Event<'_>, DecodeError> {
    if payload.len() > max_bytes {
        return Err(DecodeError::Oversized {
            len: payload.len(),
            limit: max_bytes,
        });
    }
    // JSON is UTF-8 (RFC 8259): checking the whole payload at once lets the parser borrow
    // every string without checking each again.
    let (marked, text) = fast::Marked::text(payload);
    let text = text.map_err(|e| DecodeError::Malformed {
        detail: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
    })?;
    // Filled in place: an event is ~500 bytes (its `ctx` inline), and each move of it was a
    // `memcpy` call (three per event, a tenth of a replay's instructions with the others).
    let mut raw = RawEvent::default();
    if fast::parse(text, &marked, &mut raw).is_some() {
        return raw.finish();
    }
    decode_serde(text)
}

/// [`decode`] through serde_json: every payload the fast path ([`fast`]) declines, and so
/// every bad one.
fn decode_serde(text: &str) -> Result<Event<'_>, DecodeError> {
    let failure = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let result = EventSeed { failure: &failure }
        .deserialize(&mut de)
        .and_then(|event| de.end().map(|()| event));
    match result {
        Ok(raw) => raw.finish(),
        Err(e) => Err(failure
            .into_inner()
            .unwrap_or_else(|| DecodeError::Malformed {
                detail: e.to_string(),
            })),
    }
}

/// Fields as read, before the per-type checks of [`RawEvent::finish`].
#[derive(Default)]
struct RawEvent<'a> {
    kind: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    ts: Option<i64>,
    user: Option<Cow<'a, str>>,
    item: Option<Cow<'a, str>>,
    ctx: SmallVec<[(Cow<'a, str>, CtxValue<'a>); INLINE_CTX]>,
    dwell_ms: Option<u32>,
}

/// A required field is absent. Built only when it is (`ok_or_else`): errors made eagerly
/// with `ok_or` were built and dropped again on every event, a call each time (the drop
/// glue handles the variants that own strings): 1.1% of a replay's instructions.
fn missing(field: &'static str) -> DecodeError {
    DecodeError::MissingField { field }
}

impl<'a> RawEvent<'a> {
    #[inline(always)]
    fn finish(self) -> Result<Event<'a>, DecodeError> {
        let kind = self.kind.ok_or_else(|| missing("type"))?;
        let id = self.id.ok_or_else(|| missing("id"))?;
        let ts = self.ts.ok_or_else(|| missing("ts"))?;
        let feedback = |id, kind| Ok(Event::Feedback(Feedback { id, ts, kind }));
        match kind.as_ref() {
            "impression" => Ok(Event::Impression(Impression {
                user: self.user.ok_or_else(|| missing("user"))?,
                item: self.item.ok_or_else(|| missing("item"))?,
                id,
                ts,
                ctx: self.ctx,
            })),
            "click" => feedback(id, FeedbackKind::Click),
            "like" => feedback(id, FeedbackKind::Like),
            "skip" => {
                let dwell_ms = self.dwell_ms.ok_or_else(|| missing("dwell_ms"))?;
                feedback(id, FeedbackKind::Skip { dwell_ms })
            }
            other => Err(DecodeError::UnknownType {
                found: other.chars().take(64).collect(),
            }),
        }
    }
}

/// Reads the top-level object. Field errors are recorded in `failure` with the field's
/// name, because serde's own error type cannot carry which field failed.
struct EventSeed<'f> {
    failure: &'f RefCell<Option<DecodeError>>,
}

impl EventSeed<'_> {
    fn fail<E: de::Error>(&self, field: &str, detail: impl fmt::Display) -> E {
        *self.failure.borrow_mut() = Some(DecodeError::InvalidField {
            field: field.to_owned(),
            detail: detail.to_string(),
        });
        E::custom("invalid field")
    }

    fn field<'de, A, T>(&self, map: &mut A, name: &str) -> Result<T, A::Error>
    where
        A: MapAccess<'de>,
        T: de::Deserialize<'de>,
    {
        map.next_value::<T>().map_err(|e| self.fail(name, e))
    }
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = RawEvent<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = RawEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawEvent::default();
        // `Str`, not `Cow`: serde's `Cow` always deserializes owned, one allocation per key.
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            match key.as_ref() {
                "type" => raw.kind = Some(self.field::<_, Str>(&mut map, "type")?.0),
                "id" => raw.id = Some(self.field::<_, Str>(&mut map, "id")?.0),
                "user" => raw.user = Some(self.field::<_, Str>(&mut map, "user")?.0),
                "item" => raw.item = Some(self.field::<_, Str>(&mut map, "item")?.0),
                "ts" => raw.ts = Some(self.field(&mut map, "ts")?),
                "dwell_ms" => raw.dwell_ms = Some(self.field(&mut map, "dwell_ms")?),
                "ctx" => map
                    .next_value_seed(CtxSeed {
                        out: &mut raw.ctx,
                        event: &self,
                    })
                    // A failing `ctx.<name>` is already recorded; anything else is `ctx` itself.
                    .map_err(|e| {
                        let recorded = self.failure.borrow().is_some();
                        if recorded { e } else { self.fail("ctx", e) }
                    })?,
                // Unknown top-level fields are allowed: producers may add fields.
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(raw)
    }
}

/// A string that borrows when the JSON has no escapes.
struct Str<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads `ctx` straight into the event's inline vector.
struct CtxSeed<'a, 'de, 'f> {
    out: &'a mut SmallVec<[(Cow<'de, str>, CtxValue<'de>); INLINE_CTX]>,
    event: &'a EventSeed<'f>,
}

impl<'de> DeserializeSeed<'de> for CtxSeed<'_, 'de, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CtxSeed<'_, 'de, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of strings and numbers")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            match map.next_value::<CtxValueDe<'de>>() {
                Ok(CtxValueDe(value)) => self.out.push((key, value)),
                Err(e) => return Err(self.event.fail(&format!("ctx.{key}"), e)),
            }
        }
        Ok(())
    }
}

struct CtxValueDe<'de>(CtxValue<'de>);

impl<'de> de::Deserialize<'de> for CtxValueDe<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CtxValueDe<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a finite number")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CtxValueDe(CtxValue::Str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CtxValueDe(CtxValue::Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(CtxValueDe(CtxValue::Num(v as f64)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(CtxValueDe(CtxValue::Num(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if v.is_finite() {
                    Ok(CtxValueDe(CtxValue::Num(v)))
                } else {
                    Err(E::custom("number is not finite"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The fast path of [`decode`]: the contract's events as producers write them, read by a
/// scanner that knows their fields, without serde's visitor machinery (which was about
/// half of decoding's time).
///
/// # Exactly serde's result, or none
///
/// It accepts a strict subset of JSON and returns `None` for anything outside it, which
/// [`decode`] then reads through serde_json, so every error (and every unusual event)
/// comes from the one path and reads the same. What it accepts, it reads to exactly the
/// `RawEvent` serde's path builds:
/// - one object of the known top-level fields (an unknown one: `None`), JSON whitespace
///   anywhere serde allows it, a repeated field overwriting as in the visitor (`ctx`
///   appending);
/// - strings without escapes or control characters, borrowed as serde borrows them;
/// - numbers without sign or exponent, at most 18 digits: an integer is what serde's `u64`
///   gives (`ts` as `i64`, `dwell_ms` within `u32`, a `ctx` number as `u64 as f64`); a
///   decimal `d.ddd` with a significand below 2^53 and at most 22 fraction digits is
///   `significand / 10^k`, one correctly rounded division, which is serde_json's own
///   formula here (and what a correctly rounding parser gives, since both operands are
///   exact).
///
/// Strings end at the next quote, backslash or control character: found in a mask of the
/// line's first 512 bytes made 64 bytes at a time where the CPU has AVX-512BW (`mark`),
/// else, and past them, eight bytes at a time (`string_len`).
///
/// `tests::the_fast_path_reads_what_serde_reads` checks both paths agree on every kind of
/// input, valid and not.
mod fast {
    use std::borrow::Cow;

    use smallvec::SmallVec;

    use super::{CtxValue, INLINE_CTX, RawEvent};

    /// Powers of ten a decimal's significand is divided by (exact as `f64` up to 10^22).
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];

    /// Digits accepted in one number: 10^18 - 1 fits a `u64` (and an `i64`) with no check.
    const MAX_DIGITS: usize = 18;

    /// A number as read: an integer, or a decimal's value.
    enum Number {
        Integer(u64),
        Decimal(f64),
    }

    struct Scan<'a> {
        text: &'a str,
        bytes: &'a [u8],
        at: usize,
        /// Bit `i % 64` of word `i / 64`: byte `i` ends a fast string (a quote, a backslash or a
        /// control character), for the first `marked` bytes ([`Marks`]).
        marks: Marks,
        marked: usize,
    }

    /// Bytes of a line [`Scan`] marks up front: a contract event is ~200 bytes. Past them
    /// (or without AVX-512), strings are scanned eight bytes at a time ([`string_len`]).
    const MARKED_BYTES: usize = 512;

    type Marks = [u64; MARKED_BYTES / 64];

    /// A line's string ends ([`mark`]), found before the line is known to be UTF-8.
    pub(super) struct Marked {
        marks: Marks,
        marked: usize,
    }

    impl Marked {
        /// Marks `bytes`, and reads them as text: without a UTF-8 check when marking saw
        /// all of them and they are ASCII (a contract event), else with one. The check was
        /// 2% of a replay's CPU time; the marking finds the high bits nearly for free.
        pub(super) fn text(bytes: &[u8]) -> (Self, Result<&str, std::str::Utf8Error>) {
            let mut marks = [0; MARKED_BYTES / 64];
            let (marked, ascii) = mark(bytes, &mut marks);
            let text = if ascii && marked == bytes.len() {
                // SAFETY: every byte of `bytes` is below 0x80: ASCII, which is valid UTF-8.
                Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
            } else {
                std::str::from_utf8(bytes)
            };
            (Self { marks, marked }, text)
        }
    }

    /// Reads `text`'s fields into `raw` (a default one), `marked` being its marks; `None`
    /// if it is outside the subset (see the module docs), leaving `raw` partly filled.
    pub(super) fn parse<'a>(text: &'a str, marked: &Marked, raw: &mut RawEvent<'a>) -> Option<()> {
        let mut p = Scan {
            text,
            bytes: text.as_bytes(),
            at: 0,
            marks: marked.marks,
            marked: marked.marked,
        };
        p.expect(b'{')?;
        if p.peek()? == b'}' {
            p.at += 1;
        } else {
            loop {
                let key = match p.known_key() {
                    Some(key) => key,
                    None => {
                        let key = p.string()?;
                        p.expect(b':')?;
                        key
                    }
                };
                match key {
                    "type" => raw.kind = Some(Cow::Borrowed(p.string()?)),
                    "id" => raw.id = Some(Cow::Borrowed(p.string()?)),
                    "user" => raw.user = Some(Cow::Borrowed(p.string()?)),
                    "item" => raw.item = Some(Cow::Borrowed(p.string()?)),
                    "ts" => raw.ts = Some(i64::try_from(p.integer()?).ok()?),
                    "dwell_ms" => raw.dwell_ms = Some(u32::try_from(p.integer()?).ok()?),
                    "ctx" => p.ctx(&mut raw.ctx)?,
                    _ => return None,
                }
                if !p.next_member()? {
                    break;
                }
            }
        }
        p.skip_whitespace();
        (p.at == p.bytes.len()).then_some(())
    }

    /// The length of the string that starts `rest`: the bytes before its first `"`, `\\` or
    /// control character, if that is a `"` (an escape or a control character: `None`).
    /// Eight bytes at a time (SWAR): scanning strings was most of the byte-at-a-time
    /// parser's instructions.
    #[inline]
    pub(super) fn string_len(rest: &[u8]) -> Option<usize> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        const QUOTES: u64 = ONES * b'"' as u64;
        const BACKSLASHES: u64 = ONES * b'\\' as u64;
        const SPACES: u64 = ONES * b' ' as u64;
        let mut at = 0;
        while let Some(chunk) = rest.get(at..at + 8) {
            let w = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).ok()?);
            let (q, b) = (w ^ QUOTES, w ^ BACKSLASHES);
            // `x - 0x01…` borrows through a byte only if it is 0 (`x - 0x20…`: below 0x20),
            // and `& !x` drops bytes with the high bit set: the lowest flagged byte of each
            // term is exactly its first match (higher ones may be false), so the lowest of
            // the three is the first byte that ends the fast string.
            let found = (q.wrapping_sub(ONES) & !q
                | b.wrapping_sub(ONES) & !b
                | w.wrapping_sub(SPACES) & !w)
                & HIGH;
            if found != 0 {
                at += (found.trailing_zeros() / 8) as usize;
                return (rest[at] == b'"').then_some(at);
            }
            at += 8;
        }
        at += rest[at..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        (rest[at] == b'"').then_some(at)
    }

    /// Marks where strings may end in the first [`MARKED_BYTES`] of `bytes`, 64 bytes per
    /// step; returns how many bytes it marked (0 without AVX-512BW), and whether they were
    /// all ASCII. One pass over the line instead of one per string: a contract event has
    /// ~20 strings, most under 8 bytes, and finding each one's end was the parser's largest
    /// cost.
    fn mark(bytes: &[u8], marks: &mut Marks) -> (usize, bool) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has AVX-512F and BW (AVX-512BW implies F).
            return unsafe { mark_avx512(bytes, marks) };
        }
        let _ = (bytes, marks);
        (0, false)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn mark_avx512(bytes: &[u8], marks: &mut Marks) -> (usize, bool) {
        use std::arch::x86_64::*;
        let n = bytes.len().min(MARKED_BYTES);
        let quote = _mm512_set1_epi8(b'"' as i8);
        let backslash = _mm512_set1_epi8(b'\\' as i8);
        let space = _mm512_set1_epi8(b' ' as i8);
        let mut high = 0;
        for (w, word) in marks.iter_mut().enumerate().take(n.div_ceil(64)) {
            let len = (n - 64 * w).min(64);
            let keep = u64::MAX >> (64 - len);
            // SAFETY: the mask selects bytes `64w..64w + len`, all inside `bytes`; masked-off
            // bytes are neither read nor able to fault (they load as 0).
            let v = unsafe { _mm512_maskz_loadu_epi8(keep, bytes.as_ptr().add(64 * w).cast()) };
            *word = (_mm512_cmpeq_epi8_mask(v, quote)
                | _mm512_cmpeq_epi8_mask(v, backslash)
                | _mm512_cmplt_epu8_mask(v, space))
                & keep;
            high |= _mm512_movepi8_mask(v);
        }
        (n, high == 0)
    }

    /// [`Scan::string_end`] on `bytes` from `start`, marked as `parse` marks a line.
    #[cfg(test)]
    pub(super) fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
        let mut marks = [0; MARKED_BYTES / 64];
        let (marked, _) = mark(bytes, &mut marks);
        let p = Scan {
            text: "",
            bytes,
            at: 0,
            marks,
            marked,
        };
        p.string_end(start)
    }

    impl<'a> Scan<'a> {
        /// Where the fast string starting at `start` ends: the position of its closing `"`
        /// (`None` if an escape or a control character comes first, or nothing does).
        #[inline]
        fn string_end(&self, start: usize) -> Option<usize> {
            let mut from = start;
            if start < self.marked {
                let last = (self.marked - 1) / 64;
                let mut w = start / 64;
                let mut bits = self.marks[w] & (u64::MAX << (start % 64));
                loop {
                    if bits != 0 {
                        let at = 64 * w + bits.trailing_zeros() as usize;
                        return (self.bytes[at] == b'"').then_some(at);
                    }
                    if w == last {
                        break;
                    }
                    w += 1;
                    bits = self.marks[w];
                }
                from = self.marked;
            }
            string_len(&self.bytes[from..]).map(|len| from + len)
        }

        /// Skips what serde_json skips between tokens.
        #[inline]
        fn skip_whitespace(&mut self) {
            while let Some(&(b' ' | b'\n' | b'\t' | b'\r')) = self.bytes.get(self.at) {
                self.at += 1;
            }
        }

        /// The next token's first byte.
        #[inline]
        fn peek(&mut self) -> Option<u8> {
            self.skip_whitespace();
            self.bytes.get(self.at).copied()
        }

        #[inline]
        fn expect(&mut self, byte: u8) -> Option<()> {
            (self.peek()? == byte).then(|| self.at += 1)
        }

        /// After a member: `true` on `,`, `false` on the object's `}`.
        #[inline]
        fn next_member(&mut self) -> Option<bool> {
            let more = match self.peek()? {
                b',' => true,
                b'}' => false,
                _ => return None,
            };
            self.at += 1;
            Some(more)
        }

        /// A top-level key of the contract and its colon, if the next bytes are exactly one
        /// (`"type":`, as producers write them), read by comparing them with it rather than
        /// scanning for the string's end; anything else (whitespace first, another key, an
        /// escape) is left for [`Scan::string`], which reads it to the same key.
        #[inline]
        fn known_key(&mut self) -> Option<&'static str> {
            let rest = &self.bytes[self.at..];
            let key = match rest.get(1)? {
                b't' if rest.starts_with(b"\"type\":") => "type",
                b't' if rest.starts_with(b"\"ts\":") => "ts",
                b'i' if rest.starts_with(b"\"id\":") => "id",
                b'i' if rest.starts_with(b"\"item\":") => "item",
                b'u' if rest.starts_with(b"\"user\":") => "user",
                b'c' if rest.starts_with(b"\"ctx\":") => "ctx",
                b'd' if rest.starts_with(b"\"dwell_ms\":") => "dwell_ms",
                _ => return None,
            };
            // The key, its two quotes and the colon.
            self.at += key.len() + 3;
            Some(key)
        }

        /// A string with no escape and no control character, borrowed from the payload.
        #[inline]
        fn string(&mut self) -> Option<&'a str> {
            self.expect(b'"')?;
            let start = self.at;
            let end = self.string_end(start)?;
            self.at = end + 1;
            // SAFETY: `start` follows a `"` and `end` is at one (`string_end` checks the byte,
            // and searches from `start`): as quotes are ASCII, both are character boundaries
            // of `text`, with `start <= end <= text.len()`.
            Some(unsafe { self.text.get_unchecked(start..end) })
        }

        /// Digits `0` or `[1-9][0-9]*`, at most [`MAX_DIGITS`]; with the count read.
        #[inline]
        fn digits(&mut self, significand: &mut u64, count: &mut usize) -> Option<()> {
            let start = self.at;
            while let Some(&b @ b'0'..=b'9') = self.bytes.get(self.at) {
                *significand = *significand * 10 + u64::from(b - b'0');
                self.at += 1;
                *count += 1;
                if *count > MAX_DIGITS {
                    return None;
                }
            }
            (self.at > start).then_some(())
        }

        /// A number without sign or exponent.
        fn number(&mut self) -> Option<Number> {
            self.skip_whitespace();
            let (mut significand, mut count) = (0u64, 0usize);
            let first = self.at;
            self.digits(&mut significand, &mut count)?;
            // JSON allows one leading zero only ("0", "0.5"; not "05").
            if self.bytes[first] == b'0' && count > 1 {
                return None;
            }
            let number = match self.bytes.get(self.at) {
                Some(&b'.') => {
                    self.at += 1;
                    let integer_digits = count;
                    self.digits(&mut significand, &mut count)?;
                    let fraction = count - integer_digits;
                    if significand >= 1 << 53 || fraction >= POW10.len() {
                        return None;
                    }
                    Number::Decimal(significand as f64 / POW10[fraction])
                }
                _ => Number::Integer(significand),
            };
            match self.bytes.get(self.at) {
                Some(&(b'e' | b'E' | b'.' | b'-' | b'+')) => None,
                _ => Some(number),
            }
        }

        fn integer(&mut self) -> Option<u64> {
            match self.number()? {
                Number::Integer(n) => Some(n),
                Number::Decimal(_) => None,
            }
        }

        /// `ctx`: an object of strings and numbers, appended in order.
        fn ctx(
            &mut self,
            out: &mut SmallVec<[(Cow<'a, str>, CtxValue<'a>); INLINE_CTX]>,
        ) -> Option<()> {
            self.expect(b'{')?;
            if self.peek()? == b'}' {
                self.at += 1;
                return Some(());
            }
            loop {
                let key = self.string()?;
                self.expect(b':')?;
                let value = match self.peek()? {
                    b'"' => CtxValue::Str(Cow::Borrowed(self.string()?)),
                    b'0'..=b'9' => CtxValue::Num(match self.number()? {
                        Number::Integer(n) => n as f64,
                        Number::Decimal(x) => x,
                    }),
                    _ => return None,
                };
                out.push((Cow::Borrowed(key), value));
                if !self.next_member()? {
                    return Some(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Event<'_> {
        decode(s.as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap()
    }

    fn err(s: &str) -> DecodeError {
        decode(s.as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap_err()
    }

    #[test]
    fn decodes_the_contract_examples() {
        let imp = ok(
            r#"{"type":"impression","id":"imp-81723","ts":1763800000123,"user":"u42","item":"v9001",
            "ctx":{"device":"ios","country":"PL","position":3,"hour":13,"category":"music"}}"#,
        );
        let Event::Impression(i) = imp else { panic!() };
        assert_eq!(
            (i.id.as_ref(), i.ts, i.user.as_ref(), i.item.as_ref()),
            ("imp-81723", 1763800000123, "u42", "v9001")
        );
        assert!(matches!(i.id, Cow::Borrowed(_)), "unescaped strings borrow");
        assert_eq!(i.ctx.len(), 5);
        assert!(!i.ctx.spilled());
        assert_eq!(i.ctx_get("position"), Some(&CtxValue::Num(3.0)));
        assert_eq!(i.ctx_get("device"), Some(&CtxValue::Str("ios".into())));

        assert_eq!(
            ok(r#"{"type":"click","id":"imp-81723","ts":1763800004012}"#),
            Event::Feedback(Feedback {
                id: "imp-81723".into(),
                ts: 1763800004012,
                kind: FeedbackKind::Click
            })
        );
        assert!(matches!(
            ok(r#"{"type":"like","id":"a","ts":1}"#),
            Event::Feedback(Feedback {
                kind: FeedbackKind::Like,
                ..
            })
        ));
        assert!(matches!(
            ok(r#"{"type":"skip","id":"a","ts":1,"dwell_ms":1277}"#),
            Event::Feedback(Feedback {
                kind: FeedbackKind::Skip { dwell_ms: 1277 },
                ..
            })
        ));
    }

    #[test]
    fn escaped_strings_and_unknown_fields_are_fine() {
        let Event::Impression(i) = ok(
            r#"{"type":"impression","id":"a\"b","ts":5,"user":"u","item":"i","extra":[1,{"x":2}],"ctx":{}}"#,
        ) else {
            panic!()
        };
        assert_eq!(i.id, "a\"b");
    }

    #[test]
    fn bad_events_name_the_field() {
        assert_eq!(err("not json").reason(), "malformed_json");
        assert_eq!(err("[1,2]").reason(), "malformed_json");
        assert_eq!(
            err(r#"{"type":"click","id":"a","ts":1} trailing"#).reason(),
            "malformed_json"
        );
        assert_eq!(
            err(r#"{"type":"click","ts":1}"#),
            DecodeError::MissingField { field: "id" }
        );
        assert_eq!(
            err(r#"{"type":"skip","id":"a","ts":1}"#),
            DecodeError::MissingField { field: "dwell_ms" }
        );
        assert_eq!(
            err(r#"{"type":"impression","id":"a","ts":1,"item":"i"}"#),
            DecodeError::MissingField { field: "user" }
        );
        let e = err(r#"{"type":"click","id":"a","ts":"yesterday"}"#);
        assert!(
            matches!(&e, DecodeError::InvalidField { field, .. } if field == "ts"),
            "{e}"
        );
        let e = err(r#"{"type":"click","id":7,"ts":1}"#);
        assert!(
            matches!(&e, DecodeError::InvalidField { field, .. } if field == "id"),
            "{e}"
        );
        let e = err(r#"{"type":"skip","id":"a","ts":1,"dwell_ms":-5}"#);
        assert!(
            matches!(&e, DecodeError::InvalidField { field, .. } if field == "dwell_ms"),
            "{e}"
        );
        let e = err(
            r#"{"type":"impression","id":"a","ts":1,"user":"u","item":"i","ctx":{"device":true}}"#,
        );
        assert!(
            matches!(&e, DecodeError::InvalidField { field, .. } if field == "ctx.device"),
            "{e}"
        );
        let e = err(r#"{"type":"impression","id":"a","ts":1,"user":"u","item":"i","ctx":[1]}"#);
        assert!(
            matches!(&e, DecodeError::InvalidField { field, .. } if field == "ctx"),
            "{e}"
        );
        assert_eq!(
            err(r#"{"type":"purchase","id":"a","ts":1}"#).reason(),
            "unknown_type"
        );
        // JSON has no NaN; out-of-range numbers are rejected by the parser.
        let e = err(r#"{"type":"click","id":"a","ts":NaN}"#);
        assert!(
            matches!(&e, DecodeError::InvalidField { field, .. } if field == "ts"),
            "{e}"
        );
        assert!(
            decode(
                br#"{"type":"impression","id":"a","ts":1,"user":"u","item":"i","ctx":{"x":1e999}}"#,
                1 << 20
            )
            .is_err()
        );
    }

    #[test]
    fn decoding_typical_events_does_not_allocate() {
        let lines: [&[u8]; 3] = [
            br#"{"type":"impression","id":"imp-81723","ts":1763800000123,"user":"u42","item":"v9001","ctx":{"device":"ios","country":"PL","position":3,"hour":13,"category":"music","_p_true":0.04}}"#,
            br#"{"type":"click","id":"imp-81723","ts":1763800004012}"#,
            br#"{"type":"skip","id":"a","ts":1,"dwell_ms":1277}"#,
        ];
        let n = crate::features::tests::counting::allocations(|| {
            for line in lines {
                assert!(decode(line, DEFAULT_MAX_EVENT_BYTES).is_ok());
            }
        });
        assert_eq!(n, 0);
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let e = decode(b"{\"type\":\"click\",\"id\":\"a\xff\",\"ts\":1}", 1 << 20).unwrap_err();
        assert_eq!(e.reason(), "malformed_json");
        assert_eq!(e.to_string(), "malformed JSON: invalid UTF-8 at byte 23");
    }

    #[test]
    fn oversized_is_rejected_before_parsing() {
        let big = vec![b'x'; 100];
        assert_eq!(
            decode(&big, 10).unwrap_err(),
            DecodeError::Oversized {
                len: 100,
                limit: 10
            }
        );
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        use proptest::prelude::*;
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..200))| {
            let _ = decode(&bytes, 1 << 20);
        });
    }

    /// `line` through `decode` (fast path first) and through serde alone, printed with
    /// `Debug` so that even the sign of a zero must agree.
    fn both_paths(line: &str) -> (String, String) {
        (
            format!("{:?}", decode(line.as_bytes(), DEFAULT_MAX_EVENT_BYTES)),
            format!("{:?}", decode_serde(line)),
        )
    }

    #[test]
    fn the_fast_path_reads_what_serde_reads() {
        let contract = r#"{"type":"impression","id":"imp-0","ts":1763800000000,"user":"u42609","item":"v1","ctx":{"device":"android","country":"JP","position":3,"hour":8,"category":"diy","_p_true":0.0333962}}"#;
        assert!(
            fast::parse(
                contract,
                &fast::Marked::text(contract.as_bytes()).0,
                &mut RawEvent::default()
            )
            .is_some(),
            "the contract's events take it"
        );
        for line in [
            contract,
            r#"{"type":"click","id":"imp-81723","ts":1763800004012}"#,
            r#"{"type":"skip","id":"a","ts":1,"dwell_ms":1277}"#,
            r#"{"type":"like","id":"a","ts":0}"#,
            r#" { "type" : "impression" , "id":"a","ts":5,"user":"u","item":"i","ctx": { "x" : 1.5 , "y":"z" } } "#,
            "{\"type\":\"click\",\n\t\"id\":\"a\",\r\"ts\":1}\n",
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"a":1},"ctx":{"a":2}}"#,
            r#"{"id":"a","ts":1,"type":"click","ts":2}"#,
            r#"{"type":"impression","id":"żółw","ts":5,"user":"ü","item":"€","ctx":{"ключ":"значение"}}"#,
            // Numbers at and beyond the subset's edges.
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":0,"q":0.0,"r":10.250,"s":999999999999999999}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":1234567890123456789}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":0.1234567890123456789}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":9007199254740993.5}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":0.00000000000000000000001}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":-0.0,"q":-3}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":1e3,"q":2.5E-3}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":05}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":1.}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":.5}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":1.2.3}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":1e999}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":true,"q":null}}"#,
            r#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"p":[1]}}"#,
            r#"{"type":"click","id":"a","ts":1.5}"#,
            r#"{"type":"click","id":"a","ts":-1}"#,
            r#"{"type":"click","id":"a","ts":9223372036854775808}"#,
            r#"{"type":"click","id":"a","ts":"1"}"#,
            r#"{"type":"skip","id":"a","ts":1,"dwell_ms":4294967296}"#,
            r#"{"type":"skip","id":"a","ts":1,"dwell_ms":-1}"#,
            r#"{"type":"skip","id":"a","ts":1}"#,
            // Strings serde must read: escapes, control characters.
            r#"{"type":"click","id":"a\"b","ts":1}"#,
            r#"{"type":"click","id":"a\u0041","ts":1}"#,
            "{\"type\":\"click\",\"id\":\"a\u{1}b\",\"ts\":1}",
            "{\"type\":\"click\",\"id\":\"a\u{7f}b\",\"ts\":1}",
            // Not the subset, or not JSON at all.
            r#"{"type":"click","id":"a","ts":1,"extra":[1,{"x":2}]}"#,
            r#"{"type":"click","id":"a","ts":1,}"#,
            r#"{"type":"click","id":"a","ts":1} trailing"#,
            r#"{"type":"click","id":"a","ts":1"#,
            r#"{"type":"click" "id":"a","ts":1}"#,
            r#"{"type":"nope","id":"a","ts":1}"#,
            r#"{"type":1,"id":"a","ts":1}"#,
            r#"{}"#,
            r#"[]"#,
            "",
            " ",
            "{",
            r#"{"ctx":"#,
        ] {
            let (fast, serde) = both_paths(line);
            assert_eq!(fast, serde, "{line}");
        }
    }

    #[test]
    fn the_fast_path_reads_what_serde_reads_on_random_numbers_and_damage() {
        use proptest::prelude::*;
        let event = |p: &str, ts: &str| {
            format!(
                r#"{{"type":"impression","id":"i","ts":{ts},"user":"u","item":"v","ctx":{{"device":"ios","p":{p},"hour":3}}}}"#
            )
        };
        // Decimal strings of every length around the subset's limits, and floats as Rust
        // prints them (shortest round-trip form).
        proptest!(|(int in "0|[1-9][0-9]{0,20}", frac in "[0-9]{0,25}", ts in "[0-9]{1,20}",
                    x in any::<f64>())| {
            let p = if frac.is_empty() { int.clone() } else { format!("{int}.{frac}") };
            let line = event(&p, &ts);
            let (fast, serde) = both_paths(&line);
            prop_assert_eq!(fast, serde, "{}", line);
            let line = event(&format!("{}", x.abs()), "1");
            let (fast, serde) = both_paths(&line);
            prop_assert_eq!(fast, serde, "{}", line);
        });
        // A valid event with a few bytes changed, inserted or removed.
        let base: Vec<char> = event("0.0333962", "1763800000000").chars().collect();
        let edit = (
            0..base.len() + 1,
            0..3u8,
            prop::sample::select(
                "\"\\{}[],:.-+eE0123456789 \tabnul\u{1}é"
                    .chars()
                    .collect::<Vec<_>>(),
            ),
        );
        proptest!(|(edits in proptest::collection::vec(edit, 1..4))| {
            let mut chars = base.clone();
            for (at, kind, c) in edits {
                let at = at.min(chars.len());
                match kind {
                    0 => chars.insert(at, c),
                    1 if at < chars.len() => { chars.remove(at); }
                    _ if at < chars.len() => chars[at] = c,
                    _ => chars.push(c),
                }
            }
            let line: String = chars.into_iter().collect();
            let (fast, serde) = both_paths(&line);
            prop_assert_eq!(fast, serde, "{}", line);
        });
    }

    #[test]
    fn the_fast_string_scan_stops_where_a_byte_scan_stops() {
        use proptest::prelude::*;
        let naive = |rest: &[u8]| {
            let at = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            (rest[at] == b'"').then_some(at)
        };
        let byte = prop::sample::select(vec![
            b'"', b'\\', 0, 1, 0x1f, b' ', b'!', b'#', b'a', 0x7f, 0x80, 0x9f, 0xa0, 0xc3, 0xff,
        ]);
        proptest!(|(bytes in proptest::collection::vec(byte, 0..40))| {
            prop_assert_eq!(fast::string_len(&bytes), naive(&bytes));
        });
    }

    /// The line-wide marks (AVX-512, first 512 bytes) find the same string ends as the
    /// scan from each string's start, before, across and past the marked bytes.
    #[test]
    fn marked_string_ends_are_where_a_byte_scan_stops() {
        use proptest::prelude::*;
        let naive = |bytes: &[u8], start: usize| {
            let at = start
                + bytes[start..]
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            (bytes[at] == b'"').then_some(at)
        };
        // Mostly plain bytes, so that string ends are far apart and cross word boundaries.
        let byte = prop_oneof![
            20 => Just(b'a'),
            1 => prop::sample::select(vec![b'"', b'\\', 0, 0x1f, b' ', 0x7f, 0x80, 0xff]),
        ];
        proptest!(|(bytes in proptest::collection::vec(byte, 1..700), start in any::<prop::sample::Index>())| {
            let start = start.index(bytes.len());
            prop_assert_eq!(fast::string_end(&bytes, start), naive(&bytes, start));
        });
    }

    /// Reading a line as text skips the UTF-8 check only where marking proved it ASCII:
    /// the result is `from_utf8`'s, for high bytes within, at the end of and past the
    /// marked bytes, valid sequences or not.
    #[test]
    fn lines_read_as_text_are_what_from_utf8_reads() {
        use proptest::prelude::*;
        let byte = prop_oneof![
            60 => Just(b'a'),
            1 => prop::sample::select(vec![0x7f, 0x80, 0xa9, 0xc3, 0xe2, 0xff]),
        ];
        proptest!(|(bytes in proptest::collection::vec(byte, 0..700))| {
            prop_assert_eq!(fast::Marked::text(&bytes).1, std::str::from_utf8(&bytes));
        });
        for at in [0, 63, 64, 511, 512, 599] {
            let mut line = vec![b'a'; 600];
            line[at] = 0xff;
            assert_eq!(
                fast::Marked::text(&line).1.unwrap_err().valid_up_to(),
                at,
                "invalid byte at {at}"
            );
            line[at..at + 1].copy_from_slice(b"\x7f");
            assert!(fast::Marked::text(&line).1.is_ok());
        }
        let line = "{\"a\":\"caf\u{e9}\"}".as_bytes();
        assert_eq!(fast::Marked::text(line).1, Ok("{\"a\":\"caf\u{e9}\"}"));
    }
}
