//! A JSON validator that allocates nothing but an index: it checks a document against RFC 8259
//! (as strictly as `serde_json` does) and records where each object and array ends, so that
//! [`super::Doc`] can later open any of them, or step over one, without reading it again.

/// Nesting deeper than this is refused, as `serde_json` refuses it (its recursion limit of 128
/// counts down to zero before it fails, so 127 levels pass).
const MAX_DEPTH: u32 = 127;

/// Where the scan stopped and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Invalid {
    pub at: usize,
    pub what: &'static str,
}

/// The spans of a document's objects and arrays: `(start, end)` byte offsets, `end` one past the
/// closing bracket, sorted by `start` (they are recorded as they open).
#[derive(Debug, Default)]
pub(super) struct Index(Vec<(u32, u32)>);

impl Index {
    /// One past the closing bracket of the container that opens at `start`.
    fn end_of(&self, start: usize) -> usize {
        let i = self
            .0
            .binary_search_by_key(&(start as u32), |&(s, _)| s)
            .expect("a validated container");
        self.0[i].1 as usize
    }
}

/// Check that `src` is one JSON value with optional whitespace around it. Returns the value's
/// span and the index of its containers.
///
/// One loop with an explicit stack rather than a recursive descent: the position stays in a
/// register and a value costs a jump, not a call (in a filter, a call through the guest's
/// shadow stack in linear memory).
pub(super) fn validate(src: &[u8]) -> Result<((usize, usize), Index), Invalid> {
    if src.len() >= u32::MAX as usize {
        return Err(Invalid {
            at: 0,
            what: "the document is too large",
        });
    }
    let b = src;
    let err = |at: usize, what: &'static str| Invalid { at, what };
    let mut spans: Vec<(u32, u32)> = Vec::with_capacity(src.len() / 64);
    // Open containers: their slots in `spans`, and whether each is an object (a `bool` each, not
    // bits of a `u128`, whose shifts are calls to `__ashlti3` on wasm32).
    let mut open = [0u32; MAX_DEPTH as usize];
    let mut objects = [false; MAX_DEPTH as usize];
    let mut depth = 0usize;
    let mut i = skip_ws(b, 0);
    let start = i;
    // A key comes before the next value (in an object, after `{` or `,`).
    let mut key_first = false;
    'value: loop {
        if key_first {
            i = key(b, i)?;
        }
        // A value starts at `i`. Tested from the likeliest kind down, as branches: a `match`
        // here compiles to a `br_table`, an indirect jump per value in a filter.
        let Some(&c) = b.get(i) else {
            return Err(err(i, "the document ends early"));
        };
        if c == b'"' {
            i = string(b, i)?;
        } else if c.wrapping_sub(b'0') < 10 || c == b'-' {
            i = number(b, i)?;
        } else if c | 0x20 == b'{' {
            // `{` is 0x7b and `[` 0x5b.
            if depth == MAX_DEPTH as usize {
                return Err(err(i, "nested too deeply"));
            }
            open[depth] = spans.len() as u32;
            spans.push((i as u32, 0));
            let object = c == b'{';
            objects[depth] = object;
            depth += 1;
            i = skip_ws(b, i + 1);
            if b.get(i) == Some(&(c + 2)) {
                // `}` and `]` are two after their openers.
                i += 1;
                depth -= 1;
                spans[open[depth] as usize].1 = i as u32;
            } else {
                key_first = object;
                continue 'value;
            }
        } else {
            let word: &[u8] = match c {
                b't' => b"true",
                b'f' => b"false",
                b'n' => b"null",
                _ => return Err(err(i, "expected a value")),
            };
            i = literal(b, i, word)?;
        }
        // A value ended at `i`: usually a comma follows, tested before the loop of closing
        // brackets is entered (each loop entered costs an epoch check in a filter).
        if depth == 0 {
            break;
        }
        if let Some(next) = past_separator(b, i, b',') {
            i = next;
            key_first = objects[depth - 1];
            continue;
        }
        i = skip_ws(b, i);
        if b.get(i) != Some(&b',') {
            // The close of its container, maybe of several, then a comma or the end.
            loop {
                match b.get(i) {
                    Some(b'}') if objects[depth - 1] => {}
                    Some(b']') if !objects[depth - 1] => {}
                    _ => return Err(err(i, "expected ',' or a closing bracket")),
                }
                i += 1;
                depth -= 1;
                spans[open[depth] as usize].1 = i as u32;
                if depth == 0 {
                    break 'value;
                }
                i = skip_ws(b, i);
                if b.get(i) == Some(&b',') {
                    break;
                }
            }
        }
        i = skip_ws(b, i + 1);
        key_first = objects[depth - 1];
    }
    let end = i;
    if skip_ws(b, i) != b.len() {
        return Err(err(i, "trailing characters after the document"));
    }
    Ok(((start, end), Index(spans)))
}

/// From a key's opening quote, past the key, the colon and the whitespace after it.
#[inline(always)]
fn key(b: &[u8], i: usize) -> Result<usize, Invalid> {
    if b.get(i) != Some(&b'"') {
        return Err(Invalid {
            at: i,
            what: "expected a key",
        });
    }
    let end = string(b, i)?;
    if let Some(next) = past_separator(b, end, b':') {
        return Ok(next);
    }
    let i = skip_ws(b, end);
    if b.get(i) != Some(&b':') {
        return Err(Invalid {
            at: i,
            what: "expected ':'",
        });
    }
    Ok(skip_ws(b, i + 1))
}

/// Past `sep` at `i` and at most one space after it, when what follows is not whitespace: the
/// usual `,x`, `, x`, `:x` and `: x`, recognised from three bytes without the general
/// whitespace steps. `None` leaves the rest to them.
#[inline(always)]
fn past_separator(b: &[u8], i: usize, sep: u8) -> Option<usize> {
    match *b.get(i..i + 3)? {
        [s, next, _] if s == sep && next > b' ' => Some(i + 1),
        [s, b' ', after] if s == sep && after > b' ' => Some(i + 2),
        _ => None,
    }
}

/// Bytes that end a run of plain string content: the quote, the backslash and the control
/// characters. Everything else (including UTF-8 sequences, checked per string) is content.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that is zero. Exact for the lowest such byte; a byte
/// above a zero byte may show too, so only the lowest hit is used.
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// From a string's opening quote, past its closing quote.
///
/// Eight bytes at a time while nothing special shows. The first sixteen are looked at outside
/// any loop: most strings end there, and in a filter every loop entered costs an epoch check
/// (wasmtime's deadline), which measured a third of this scanner's time before.
#[inline(always)]
fn string(b: &[u8], start: usize) -> Result<usize, Invalid> {
    // Two words unrolled: sixteen bytes hold most keys and short values.
    let mut i = start + 1;
    for _ in 0..2 {
        let Some(bytes) = b.get(i..i + 8) else {
            return string_slow(b, start, i);
        };
        match string_word(bytes) {
            Ok(n) => return Ok(i + n),
            Err(Some(n)) => return string_slow(b, start, i + n),
            Err(None) => i += 8,
        }
    }
    string_long(b, start, i)
}

/// In eight bytes: `Ok(n)` past a closing quote, `Err(Some(n))` at a byte for the slow path
/// (`\\`, a control character, or one that is not ASCII, for the UTF-8 check), `Err(None)`
/// if nothing special shows.
#[inline(always)]
fn string_word(bytes: &[u8]) -> Result<usize, Option<usize>> {
    let word = u64::from_le_bytes(bytes[..8].try_into().expect("eight bytes"));
    let quotes = zero_bytes(word ^ (ONES * u64::from(b'"')));
    let others = zero_bytes(word ^ (ONES * u64::from(b'\\')))
        | ((word.wrapping_sub(ONES * 0x20) | word) & HIGHS);
    let hits = quotes | others;
    if hits == 0 {
        return Err(None);
    }
    // The lowest hit is exact in each mask, so a quote there is the string's end.
    let n = (hits.trailing_zeros() / 8) as usize;
    if hits & hits.wrapping_neg() & quotes != 0 {
        Ok(n + 1)
    } else {
        Err(Some(n))
    }
}

/// [`string`] past its first eight bytes: the loop.
#[inline(never)]
fn string_long(b: &[u8], start: usize, mut i: usize) -> Result<usize, Invalid> {
    while let Some(bytes) = b.get(i..i + 8) {
        match string_word(bytes) {
            Ok(n) => return Ok(i + n),
            Err(Some(n)) => return string_slow(b, start, i + n),
            Err(None) => i += 8,
        }
    }
    string_slow(b, start, i)
}

/// [`string`] from `i` on, a byte at a time: escapes, non-ASCII text and the last few bytes.
#[cold]
fn string_slow(b: &[u8], start: usize, mut i: usize) -> Result<usize, Invalid> {
    let mut seen = 0u8;
    loop {
        let run = b[i..]
            .iter()
            .position(|&c| {
                seen |= c;
                STRING_STOP[c as usize]
            })
            .ok_or(Invalid {
                at: b.len(),
                what: "a string is not closed",
            })?;
        i += run;
        match b[i] {
            b'"' => break,
            b'\\' => i = escape(b, i)?,
            _ => {
                return Err(Invalid {
                    at: i,
                    what: "a control character in a string",
                });
            }
        }
    }
    i += 1;
    if seen >= 0x80 && std::str::from_utf8(&b[start..i]).is_err() {
        return Err(Invalid {
            at: start,
            what: "a string is not valid UTF-8",
        });
    }
    Ok(i)
}

/// From a backslash, past its escape sequence.
fn escape(b: &[u8], i: usize) -> Result<usize, Invalid> {
    let err = |what| Invalid { at: i, what };
    match b.get(i + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
        Some(b'u') => {
            let unit = hex4(b, i + 2)?;
            if (0xDC00..0xE000).contains(&unit) {
                return Err(err("a lone low surrogate"));
            }
            if !(0xD800..0xDC00).contains(&unit) {
                return Ok(i + 6);
            }
            if b.get(i + 6..i + 8) != Some(b"\\u") || !(0xDC00..0xE000).contains(&hex4(b, i + 8)?) {
                return Err(err("a high surrogate without its low half"));
            }
            Ok(i + 12)
        }
        _ => Err(err("an invalid escape")),
    }
}

/// The value of the four hex digits at `i`.
fn hex4(b: &[u8], i: usize) -> Result<u32, Invalid> {
    let digits = b.get(i..i + 4).ok_or(Invalid {
        at: b.len(),
        what: "the document ends early",
    })?;
    digits.iter().try_fold(0, |unit, &d| {
        let v = (d as char).to_digit(16).ok_or(Invalid {
            at: i,
            what: "an invalid \\u escape",
        })?;
        Ok(unit * 16 + v)
    })
}

/// Past the digits at `i`. (Numbers are short: eight bytes at a time measured slower.) The
/// first byte is tested before the loop, which costs an epoch check in a filter.
#[inline(always)]
fn digits(b: &[u8], i: usize) -> usize {
    if !b.get(i).is_some_and(u8::is_ascii_digit) {
        return i;
    }
    i + 1 + b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count()
}

#[inline(always)]
fn number(b: &[u8], start: usize) -> Result<usize, Invalid> {
    let invalid = |at| Invalid {
        at,
        what: "an invalid number",
    };
    let mut i = start + usize::from(b[start] == b'-');
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i + 1),
        _ => return Err(invalid(i)),
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return Err(invalid(end));
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return Err(invalid(end));
        }
        i = end;
    }
    Ok(i)
}

#[inline(always)]
fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, Invalid> {
    if b[i..].starts_with(word) {
        Ok(i + word.len())
    } else {
        Err(Invalid {
            at: i,
            what: "expected a value",
        })
    }
}

/// One past the end of the value that starts at `at` in a validated document.
pub(super) fn skip(src: &[u8], index: &Index, at: usize) -> usize {
    match src[at] {
        b'{' | b'[' => index.end_of(at),
        b'"' => string_end(src, at).0,
        _ => {
            at + src[at..]
                .iter()
                .position(|c| matches!(c, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(src.len() - at)
        }
    }
}

/// One past the closing quote of the validated string that opens at `at`, and whether it
/// holds an escape.
pub(super) fn string_end(src: &[u8], at: usize) -> (usize, bool) {
    let mut i = at + 1;
    let mut escaped = false;
    loop {
        i += src[i..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\')
            .expect("a validated string");
        if src[i] == b'"' {
            return (i + 1, escaped);
        }
        escaped = true;
        i += 2;
    }
}

/// JSON's whitespace, as bits of a `u64` indexed by byte.
const WS: u64 = 1 << b' ' | 1 << b'\t' | 1 << b'\n' | 1 << b'\r';

/// The first byte at or after `at` that is not whitespace. (A bit test rather than a `match`,
/// which compiles to a `br_table`: an indirect jump per call in a filter. And no loop is entered
/// when there is no whitespace, since each entry costs an epoch check there.)
#[inline(always)]
pub(super) fn skip_ws(src: &[u8], mut at: usize) -> usize {
    let is_ws = |c: u8| c <= b' ' && (1u64 << c) & WS != 0;
    // None, or (as after `,` and `:` in indented or Python-made JSON) one.
    for _ in 0..2 {
        if !src.get(at).is_some_and(|&c| is_ws(c)) {
            return at;
        }
        at += 1;
    }
    while src.get(at).is_some_and(|&c| is_ws(c)) {
        at += 1;
    }
    at
}
