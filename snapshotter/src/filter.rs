//! containerd's filter expressions, as used by the snapshot `List`/`Walk` RPCs.
//!
//! A std-only port of the grammar of `github.com/containerd/containerd/filters`:
//!
//! ```text
//! filters   := filter*                        a `&[String]`, OR-ed
//! filter    := selector ("," selector)*       AND-ed
//! selector  := fieldpath [operator value]
//! fieldpath := field ("." field)*
//! field     := [A-Za-z0-9_-]+ | "go string" | `raw string`
//! operator  := "==" | "!=" | "~="
//! value     := "go string" | `raw string` | unquoted
//!            | /go string/ | |go string|     (only after "~=")
//! unquoted  := everything up to the next ",", whitespace or control character; may be empty
//! ```
//!
//! Example: `labels."containerd.io/snapshot.ref"==sha256:abc,parent==`.
//!
//! A selector is evaluated as containerd's `selector.Match` does, with the value of the field at
//! its path as given by an [`Adaptor`]:
//! - no operator: the field is present;
//! - `==`: the field is present and equal to the value;
//! - `!=`: the field's value differs from the value, an absent field counting as `""`;
//! - `~=`: the value, a regular expression, matches somewhere in the field's value (absent = `""`).
//!
//! An empty list of filters, or a list holding an empty string, matches everything.
//!
//! Differences from containerd, each accepting something containerd rejects:
//! - backquoted raw strings are accepted as field names and values;
//! - a missing value (`parent==`) is the empty string, where containerd wants `parent==""`;
//! - whitespace is ignored around every token, where containerd only skips it before one;
//! - an unquoted `==`/`!=` value may start with `.`, `/` or `|`.
//!
//! Regular expressions follow Go's RE2 syntax, of which they support: literals and escapes
//! (`\.`, `\n`, `\x41`, `\x{263a}`, `\Q...\E`), `.`, classes (`[abc]`, `[a-z]`, `[^...]`,
//! `[[:alpha:]]`, `\d \w \s` and their negations), anchors (`^ $ \A \z \b \B`), groups (`(...)`,
//! `(?:...)`, `(?P<name>...)`), flags (`(?i)`, `(?m)`, `(?s)`, `(?U)`, also scoped as `(?i:...)`),
//! alternation `|`, and repetition (`* + ? {n} {n,} {n,m}`, lazy forms accepted). Unicode classes
//! (`\pL`), backreferences and look-arounds are rejected when the filter is parsed. Like Go's
//! `MatchString`, a pattern matches anywhere in the text unless anchored. Patterns are compiled to a
//! Thompson NFA and simulated in time linear in the text, so no pattern can make matching hang;
//! instead, patterns whose compiled program would be larger than a fixed bound are rejected.

/// Something a filter can be evaluated against.
pub trait Adaptor {
    /// The value at `path` (e.g. `["name"]`, `["labels", "containerd.io/snapshot.ref"]`), or None when absent.
    fn field(&self, path: &[String]) -> Option<String>;
}

/// A parsed set of filters (OR of AND-ed selectors).
#[derive(Debug, Clone)]
pub struct Filter {
    /// The filter matches when all the selectors of any one of these match; an empty one matches
    /// everything. Never empty itself.
    any: Vec<Vec<Selector>>,
}

/// Why a filter string was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The filter string is not well-formed.
    #[error("invalid filter {input:?}: {what} at byte {pos}: {}", mark(.input, *.pos))]
    Syntax {
        /// The whole filter string.
        input: String,
        /// Byte offset in `input` at which the problem was found.
        pos: usize,
        /// What is wrong.
        what: String,
    },
    /// The value of a `~=` selector is not a supported regular expression.
    #[error("invalid regular expression {pattern:?} in filter: {what}")]
    Regex {
        /// The regular expression, unquoted.
        pattern: String,
        /// What is wrong with it.
        what: String,
    },
}

/// Shows `input` with the character at byte `pos` marked as `>|c|<`, the way containerd does.
fn mark(input: &str, pos: usize) -> String {
    let (Some(before), Some(rest)) = (input.get(..pos), input.get(pos..)) else {
        return input.to_string();
    };
    let mut after = rest.chars();
    match after.next() {
        Some(c) => format!("{before} >|{c}|< {}", after.as_str()),
        None => format!("{before} >|<"),
    }
}

impl Filter {
    /// Parses each of `filters`; the result matches what any of them matches. No filters, or an
    /// empty one, match everything.
    ///
    /// # Errors
    ///
    /// [`FilterError::Syntax`] for a malformed filter string, [`FilterError::Regex`] for a `~=`
    /// operand that is not a supported regular expression.
    pub fn parse_all(filters: &[String]) -> Result<Filter, FilterError> {
        let mut any = Vec::with_capacity(filters.len().max(1));
        for filter in filters {
            any.push(if filter.is_empty() { Vec::new() } else { Parser::parse(filter)? });
        }
        if any.is_empty() {
            any.push(Vec::new());
        }
        Ok(Filter { any })
    }

    /// Whether the object behind `a` is selected by this filter.
    pub fn matches(&self, a: &dyn Adaptor) -> bool {
        self.any.iter().any(|all| all.iter().all(|selector| selector.matches(a)))
    }
}

/// One `<fieldpath>[<operator><value>]` term of a filter.
#[derive(Debug, Clone)]
struct Selector {
    /// The field's path, one entry per `.`-separated segment, unquoted.
    path: Vec<String>,
    /// What is tested of the field.
    op: Op,
}

/// An operator with its operand.
#[derive(Debug, Clone)]
enum Op {
    /// No operator: the field is present.
    Present,
    /// `==`: the field is present and has this value.
    Equal(String),
    /// `!=`: the field (`""` when absent) has another value.
    NotEqual(String),
    /// `~=`: the field (`""` when absent) matches this regular expression.
    Matches(Regex),
}

impl Selector {
    /// Evaluates the selector as containerd's `selector.Match` does.
    fn matches(&self, a: &dyn Adaptor) -> bool {
        let value = a.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(want) => value.as_deref() == Some(want.as_str()),
            Op::NotEqual(other) => value.as_deref().unwrap_or("") != other,
            Op::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

/// The operators, before their operand is parsed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OpKind {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `~=`
    Matches,
}

/// Recursive-descent parser of one filter string.
struct Parser<'a> {
    /// The filter string.
    input: &'a str,
    /// Byte offset of the next character.
    pos: usize,
}

/// Characters of an unquoted field name (containerd's `isFieldRune`).
fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl<'a> Parser<'a> {
    /// Parses a non-empty filter string into its AND-ed selectors.
    fn parse(input: &'a str) -> Result<Vec<Selector>, FilterError> {
        let mut p = Parser { input, pos: 0 };
        let mut selectors = Vec::new();
        loop {
            selectors.push(p.selector()?);
            p.skip_ws();
            match p.peek() {
                None => return Ok(selectors),
                Some(',') => {
                    p.bump();
                }
                Some(c) => return Err(p.err(p.pos, format!("unexpected {c:?}, expected ',' or the end of the filter"))),
            }
        }
    }

    /// A syntax error at byte `pos`.
    fn err(&self, pos: usize, what: impl Into<String>) -> FilterError {
        FilterError::Syntax { input: self.input.to_string(), pos, what: what.into() }
    }

    /// The next character, if any.
    fn peek(&self) -> Option<char> {
        self.input.get(self.pos..).and_then(|rest| rest.chars().next())
    }

    /// Consumes and returns the next character, if any.
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Consumes whitespace.
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    /// `selector := fieldpath [operator value]`
    fn selector(&mut self) -> Result<Selector, FilterError> {
        let mut path = vec![self.field()?];
        loop {
            self.skip_ws();
            if self.peek() != Some('.') {
                break;
            }
            self.bump();
            path.push(self.field()?);
        }

        let op_start = self.pos;
        match self.peek() {
            None | Some(',') => return Ok(Selector { path, op: Op::Present }),
            Some('=' | '!' | '~') => {}
            Some(c) => {
                return Err(self.err(
                    op_start,
                    format!("unexpected {c:?}, expected \"==\", \"!=\", \"~=\", ',' or the end of the filter"),
                ))
            }
        }
        // Like containerd, take the whole run of operator characters, so `===` is one bad operator.
        let mut op = String::new();
        while let Some(c @ ('=' | '!' | '~')) = self.peek() {
            op.push(c);
            self.bump();
        }
        let kind = match op.as_str() {
            "==" => OpKind::Equal,
            "!=" => OpKind::NotEqual,
            "~=" => OpKind::Matches,
            _ => {
                return Err(
                    self.err(op_start, format!("unsupported operator {op:?}, expected \"==\", \"!=\" or \"~=\""))
                )
            }
        };

        self.skip_ws();
        let value = self.value(kind == OpKind::Matches)?;
        let op = match kind {
            OpKind::Equal => Op::Equal(value),
            OpKind::NotEqual => Op::NotEqual(value),
            OpKind::Matches => Op::Matches(Regex::new(&value)?),
        };
        Ok(Selector { path, op })
    }

    /// A field name: `[A-Za-z0-9_-]+`, a double-quoted Go string or a backquoted raw string.
    fn field(&mut self) -> Result<String, FilterError> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            Some('"') => self.quoted('"'),
            Some('`') => self.raw(),
            Some(c) if is_field_char(c) => {
                let mut name = String::new();
                while let Some(c) = self.peek().filter(|&c| is_field_char(c)) {
                    name.push(c);
                    self.bump();
                }
                Ok(name)
            }
            Some(q @ ('/' | '|')) => {
                Err(self.err(start, format!("invalid quote {q:?}: field names may only be quoted with '\"' or '`'")))
            }
            Some(c) => Err(self.err(start, format!("unexpected {c:?}, expected a field name or a quoted string"))),
            None => Err(self.err(start, "unexpected end of filter, expected a field name or a quoted string")),
        }
    }

    /// The operand of an operator; `regex` allows containerd's `/.../` and `|...|` quotes.
    fn value(&mut self, regex: bool) -> Result<String, FilterError> {
        let start = self.pos;
        match self.peek() {
            None | Some(',') => Ok(String::new()),
            Some('"') => self.quoted('"'),
            Some('`') => self.raw(),
            Some(q @ ('/' | '|')) if regex => self.quoted(q),
            Some(c) => {
                let mut value = String::new();
                while let Some(c) = self.peek().filter(|&c| c != ',' && !c.is_whitespace() && !c.is_control()) {
                    value.push(c);
                    self.bump();
                }
                if value.is_empty() {
                    return Err(self.err(start, format!("unexpected {c:?}, expected a value")));
                }
                Ok(value)
            }
        }
    }

    /// A string quoted with `delim` and holding Go escapes (containerd's `unquote`): `\a \b \f \n
    /// \r \t \v \\`, `\` followed by `delim`, `\xHH` and `\OOO` bytes, `\uHHHH` and `\UHHHHHHHH`.
    fn quoted(&mut self, delim: char) -> Result<String, FilterError> {
        let start = self.pos;
        self.bump();
        let mut bytes: Vec<u8> = Vec::new();
        let mut utf8 = [0u8; 4];
        loop {
            let at = self.pos;
            let c = match self.bump() {
                None | Some('\n') => return Err(self.err(start, "quoted string not terminated")),
                Some(c) => c,
            };
            if c == delim {
                break;
            }
            if c != '\\' {
                bytes.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                continue;
            }
            let Some(escape) = self.bump() else {
                return Err(self.err(start, "quoted string not terminated"));
            };
            let decoded = match escape {
                'a' => '\x07',
                'b' => '\x08',
                'f' => '\x0c',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                'v' => '\x0b',
                '\\' => '\\',
                e if e == delim => e,
                'x' => {
                    let byte = self.digits(16, 2, at)?;
                    bytes.push(u8::try_from(byte).map_err(|_| self.err(at, "invalid escape sequence"))?);
                    continue;
                }
                '0'..='7' => {
                    self.pos = at + 1; // re-read the first digit
                    let byte = self.digits(8, 3, at)?;
                    let byte = u8::try_from(byte).map_err(|_| self.err(at, "octal escape value above 255"))?;
                    bytes.push(byte);
                    continue;
                }
                'u' | 'U' => {
                    let n = if escape == 'u' { 4 } else { 8 };
                    let code = self.digits(16, n, at)?;
                    char::from_u32(code).ok_or_else(|| self.err(at, "escape is not a valid Unicode scalar value"))?
                }
                e => return Err(self.err(at, format!("invalid escape sequence \"\\{e}\""))),
            };
            bytes.extend_from_slice(decoded.encode_utf8(&mut utf8).as_bytes());
        }
        String::from_utf8(bytes).map_err(|_| self.err(start, "quoted string is not valid UTF-8"))
    }

    /// Exactly `n` digits in `radix`, for the escape starting at `at`.
    fn digits(&mut self, radix: u32, n: usize, at: usize) -> Result<u32, FilterError> {
        let mut value: u32 = 0;
        for _ in 0..n {
            let digit = self.peek().and_then(|c| c.to_digit(radix));
            let Some(digit) = digit else {
                return Err(self.err(at, "invalid numeric escape sequence"));
            };
            self.bump();
            value = value.wrapping_mul(radix).wrapping_add(digit);
        }
        Ok(value)
    }

    /// A backquoted raw string: no escapes, carriage returns dropped (Go's semantics).
    fn raw(&mut self) -> Result<String, FilterError> {
        let start = self.pos;
        self.bump();
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return Err(self.err(start, "raw string not terminated")),
                Some('`') => return Ok(s),
                Some('\r') => {}
                Some(c) => s.push(c),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regular expressions
// ---------------------------------------------------------------------------------------------

/// Largest count allowed in `{n,m}` (Go's limit too).
const MAX_REPEAT: u32 = 1000;
/// Deepest group nesting accepted; bounds the recursion of the parser and compiler.
const MAX_NESTING: usize = 200;
/// Most instructions in a compiled pattern; bounds matching at `O(MAX_PROGRAM * text length)`.
const MAX_PROGRAM: usize = 10_000;

/// A compiled regular expression (see the module documentation for the syntax).
#[derive(Clone)]
struct Regex {
    /// The source pattern.
    pattern: String,
    /// The compiled NFA; `Inst::Match` is its last instruction.
    prog: Vec<Inst>,
}

impl std::fmt::Debug for Regex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Regex").field(&self.pattern).finish()
    }
}

/// Flags in effect while parsing a pattern.
#[derive(Clone, Copy, Default)]
struct Flags {
    /// `i`: case-insensitive.
    fold: bool,
    /// `m`: `^` and `$` match at line boundaries.
    multi_line: bool,
    /// `s`: `.` matches `\n`.
    dot_nl: bool,
}

/// Zero-width assertions.
#[derive(Clone, Copy, Debug)]
enum Assertion {
    /// `^`, `\A`
    BeginText,
    /// `$`, `\z`
    EndText,
    /// `(?m)^`
    BeginLine,
    /// `(?m)$`
    EndLine,
    /// `\b`
    WordBoundary,
    /// `\B`
    NotWordBoundary,
}

/// A character class.
#[derive(Clone, Debug)]
struct Class {
    /// Inclusive ranges.
    ranges: Vec<(char, char)>,
    /// `[^...]`.
    negated: bool,
    /// Case-insensitive.
    fold: bool,
}

/// The lowercase and uppercase forms of `c`, each `c` itself when it is not a single character.
fn case_pair(c: char) -> (char, char) {
    fn single(mut it: impl Iterator<Item = char>, c: char) -> char {
        match (it.next(), it.next()) {
            (Some(x), None) => x,
            _ => c,
        }
    }
    (single(c.to_lowercase(), c), single(c.to_uppercase(), c))
}

impl Class {
    /// Whether `c` is in the class.
    fn contains(&self, c: char) -> bool {
        let has = |c: char| self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        let hit = has(c)
            || (self.fold && {
                let (lower, upper) = case_pair(c);
                has(lower) || has(upper)
            });
        hit != self.negated
    }
}

/// Whether text character `c` matches pattern character `want`.
fn char_matches(c: char, want: char, fold: bool) -> bool {
    c == want
        || (fold && {
            let (cl, cu) = case_pair(c);
            let (wl, wu) = case_pair(want);
            cl == wl || cu == wu
        })
}

/// Parsed pattern.
#[derive(Debug)]
enum Node {
    /// Matches the empty string.
    Empty,
    /// A character; case-insensitively when the flag is set.
    Char(char, bool),
    /// `.`; the flag says whether it matches `\n`.
    Any(bool),
    /// `[...]`, `\d` and friends.
    Class(Class),
    /// `^`, `$`, `\b`...
    Assert(Assertion),
    /// A sequence.
    Concat(Vec<Node>),
    /// `a|b|c`.
    Alt(Vec<Node>),
    /// `x{min,max}`; no max is unbounded.
    Repeat(Box<Node>, u32, Option<u32>),
}

/// NFA instructions.
#[derive(Clone, Debug)]
enum Inst {
    /// Consume this character (case-insensitively when the flag is set).
    Char(char, bool),
    /// Consume any character; `\n` only when the flag is set.
    Any(bool),
    /// Consume a character in the class.
    Class(Class),
    /// Continue when the assertion holds here.
    Assert(Assertion),
    /// Continue at both.
    Split(usize, usize),
    /// Continue there.
    Jmp(usize),
    /// Success.
    Match,
}

/// `\d`, `\s`, `\w` (lowercase letter), ASCII as in Go.
fn perl_ranges(kind: char) -> &'static [(char, char)] {
    match kind {
        'd' => &[('0', '9')],
        's' => &[('\t', '\n'), ('\x0c', '\r'), (' ', ' ')],
        _ => &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')],
    }
}

/// The POSIX class `[:name:]`.
fn posix_ranges(name: &str) -> Option<&'static [(char, char)]> {
    Some(match name {
        "alnum" => &[('0', '9'), ('A', 'Z'), ('a', 'z')],
        "alpha" => &[('A', 'Z'), ('a', 'z')],
        "ascii" => &[('\0', '\x7f')],
        "blank" => &[('\t', '\t'), (' ', ' ')],
        "cntrl" => &[('\0', '\x1f'), ('\x7f', '\x7f')],
        "digit" => &[('0', '9')],
        "graph" => &[('!', '~')],
        "lower" => &[('a', 'z')],
        "print" => &[(' ', '~')],
        "punct" => &[('!', '/'), (':', '@'), ('[', '`'), ('{', '~')],
        "space" => &[('\t', '\r'), (' ', ' ')],
        "upper" => &[('A', 'Z')],
        "word" => &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')],
        "xdigit" => &[('0', '9'), ('A', 'F'), ('a', 'f')],
        _ => return None,
    })
}

/// All characters not in `ranges`.
fn complement(ranges: &[(char, char)]) -> Vec<(char, char)> {
    fn push(out: &mut Vec<(char, char)>, lo: u32, hi: u32) {
        // The surrogate gap holds no characters.
        let lo = if (0xD800..=0xDFFF).contains(&lo) { 0xE000 } else { lo };
        let hi = if (0xD800..=0xDFFF).contains(&hi) { 0xD7FF } else { hi };
        if let (Some(lo), Some(hi)) = (char::from_u32(lo), char::from_u32(hi)) {
            if lo <= hi {
                out.push((lo, hi));
            }
        }
    }
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut out = Vec::new();
    let mut next: u32 = 0;
    for (lo, hi) in sorted {
        let lo = u32::from(lo);
        if lo > next {
            push(&mut out, next, lo - 1);
        }
        next = next.max(u32::from(hi).saturating_add(1));
    }
    push(&mut out, next, u32::from(char::MAX));
    out
}

/// A decimal repeat count; saturates rather than overflowing.
fn repeat_count(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u32, |n, b| n.saturating_mul(10).saturating_add(u32::from(b - b'0'))))
}

/// Recursive-descent parser of a pattern.
struct ReParser<'a> {
    /// The pattern.
    src: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    /// Flags in effect.
    flags: Flags,
    /// Groups currently open.
    depth: usize,
}

impl<'a> ReParser<'a> {
    /// The unparsed rest of the pattern.
    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    /// The next character, if any.
    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// The character after the next, if any.
    fn peek2(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    /// Consumes and returns the next character, if any.
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Consumes `c` if it is next.
    fn eat(&mut self, c: char) -> bool {
        let next = self.peek() == Some(c);
        if next {
            self.pos += c.len_utf8();
        }
        next
    }

    /// The whole pattern.
    fn parse(&mut self) -> Result<Node, String> {
        let node = self.alternation()?;
        match self.peek() {
            None => Ok(node),
            Some(_) => Err(format!("unexpected ')' at byte {}: no group to close", self.pos)),
        }
    }

    /// `concatenation ("|" concatenation)*`
    fn alternation(&mut self) -> Result<Node, String> {
        let mut branches = vec![self.concatenation()?];
        while self.eat('|') {
            branches.push(self.concatenation()?);
        }
        Ok(if branches.len() == 1 { branches.pop().unwrap_or(Node::Empty) } else { Node::Alt(branches) })
    }

    /// Repeated atoms, up to `|`, `)` or the end.
    fn concatenation(&mut self) -> Result<Node, String> {
        let mut items = Vec::new();
        loop {
            let start = self.pos;
            let Some(c) = self.peek() else { break };
            let atom = match c {
                '|' | ')' => break,
                '(' => match self.group()? {
                    Some(node) => node,
                    None => continue, // only set flags
                },
                '[' => Node::Class(self.class()?),
                '.' => {
                    self.bump();
                    Node::Any(self.flags.dot_nl)
                }
                '^' => {
                    self.bump();
                    Node::Assert(if self.flags.multi_line { Assertion::BeginLine } else { Assertion::BeginText })
                }
                '$' => {
                    self.bump();
                    Node::Assert(if self.flags.multi_line { Assertion::EndLine } else { Assertion::EndText })
                }
                '*' | '+' | '?' => {
                    return Err(format!("missing argument to repetition operator {c:?} at byte {start}"))
                }
                '{' if self.repeat_spec().is_some() => {
                    return Err(format!("missing argument to repetition operator at byte {start}"))
                }
                '\\' if self.rest().starts_with("\\Q") => {
                    // Literal text up to `\E` or the end; a repetition applies to its last character.
                    let body = self.rest().get(2..).unwrap_or("");
                    let (text, len) = match body.find("\\E") {
                        Some(end) => (body.get(..end).unwrap_or(""), end + 4),
                        None => (body, body.len() + 2),
                    };
                    self.pos += len;
                    let fold = self.flags.fold;
                    let mut chars: Vec<char> = text.chars().collect();
                    let Some(last) = chars.pop() else { continue };
                    items.extend(chars.into_iter().map(|c| Node::Char(c, fold)));
                    Node::Char(last, fold)
                }
                '\\' => self.escape()?,
                c => {
                    self.bump();
                    Node::Char(c, self.flags.fold)
                }
            };
            let atom = self.repetitions(atom)?;
            items.push(atom);
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Concat(items),
        })
    }

    /// A `{n}`, `{n,}` or `{n,m}` at the current position: (min, max, length in bytes).
    fn repeat_spec(&self) -> Option<(u32, Option<u32>, usize)> {
        let body = self.rest().strip_prefix('{')?;
        let end = body.find('}')?;
        let inner = body.get(..end)?;
        let (min, max) = match inner.split_once(',') {
            None => {
                let n = repeat_count(inner)?;
                (n, Some(n))
            }
            Some((lo, "")) => (repeat_count(lo)?, None),
            Some((lo, hi)) => (repeat_count(lo)?, Some(repeat_count(hi)?)),
        };
        Some((min, max, end + 2))
    }

    /// Applies the repetition operator following `atom`, if any.
    fn repetitions(&mut self, atom: Node) -> Result<Node, String> {
        let start = self.pos;
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => match self.repeat_spec() {
                Some((min, max, len)) => {
                    self.pos += len - 1;
                    (min, max)
                }
                None => return Ok(atom),
            },
            _ => return Ok(atom),
        };
        self.bump();
        if min > MAX_REPEAT || max.is_some_and(|max| max > MAX_REPEAT || max < min) {
            return Err(format!("invalid repeat count at byte {start}: counts go up to {MAX_REPEAT}, minimum first"));
        }
        self.eat('?'); // non-greedy: makes no difference to whether there is a match
        if matches!(self.peek(), Some('*' | '+' | '?')) || (self.peek() == Some('{') && self.repeat_spec().is_some()) {
            return Err(format!("invalid nested repetition operator at byte {}", self.pos));
        }
        Ok(Node::Repeat(Box::new(atom), min, max))
    }

    /// A group, or None for a flags-only `(?i)`, which changes the flags of the enclosing group.
    fn group(&mut self) -> Result<Option<Node>, String> {
        let start = self.pos;
        self.bump();
        if self.depth >= MAX_NESTING {
            return Err(format!("groups nested more than {MAX_NESTING} deep"));
        }
        let saved = self.flags;
        if self.eat('?') {
            let rest = self.rest();
            if let Some(after) = rest.strip_prefix("P<").or_else(|| rest.strip_prefix('<')) {
                let end = after.find('>').ok_or_else(|| format!("unterminated group name at byte {start}"))?;
                let name = after.get(..end).unwrap_or("");
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("invalid group name {name:?} at byte {start}"));
                }
                self.pos += rest.len() - after.len() + end + 1;
            } else {
                let mut flags = self.flags;
                let mut negate = false;
                let mut flag_seen = false; // since the start or the '-'
                loop {
                    match self.bump() {
                        Some(f @ ('i' | 'm' | 's' | 'U')) => {
                            match f {
                                'i' => flags.fold = !negate,
                                'm' => flags.multi_line = !negate,
                                's' => flags.dot_nl = !negate,
                                _ => {} // ungreedy: makes no difference to whether there is a match
                            }
                            flag_seen = true;
                        }
                        Some('-') if !negate => {
                            negate = true;
                            flag_seen = false;
                        }
                        Some(':') if !negate || flag_seen => break,
                        Some(')') if flag_seen => {
                            self.flags = flags;
                            return Ok(None);
                        }
                        _ => return Err(format!("invalid or unsupported group syntax at byte {start}")),
                    }
                }
                self.flags = flags;
            }
        }
        self.depth += 1;
        let inner = self.alternation();
        self.depth -= 1;
        let inner = inner?;
        if !self.eat(')') {
            return Err(format!("missing closing ')' for the group opened at byte {start}"));
        }
        self.flags = saved;
        Ok(Some(inner))
    }

    /// A bracketed class `[...]`.
    fn class(&mut self) -> Result<Class, String> {
        let start = self.pos;
        let unterminated = || format!("missing closing ']' for the character class opened at byte {start}");
        self.bump();
        let negated = self.eat('^');
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let c = self.peek().ok_or_else(unterminated)?;
            if c == ']' && !first {
                self.bump();
                break;
            }
            first = false;
            if self.rest().starts_with("[:") {
                if let Some(posix) = self.posix_class()? {
                    ranges.extend(posix);
                    continue;
                }
            }
            if c == '\\' {
                match self.peek2() {
                    Some(k @ ('d' | 'D' | 'w' | 'W' | 's' | 'S')) => {
                        self.pos += 2;
                        let base = perl_ranges(k.to_ascii_lowercase());
                        ranges.extend(if k.is_ascii_uppercase() { complement(base) } else { base.to_vec() });
                        continue;
                    }
                    Some(k @ ('p' | 'P')) => {
                        return Err(format!("Unicode character classes are not supported (\\{k} at byte {})", self.pos))
                    }
                    _ => {}
                }
            }
            let lo = self.class_char()?;
            if self.peek() == Some('-') && !matches!(self.peek2(), Some(']') | None) {
                self.bump();
                let hi = self.class_char()?;
                if hi < lo {
                    return Err(format!("invalid character class range {lo}-{hi}"));
                }
                ranges.push((lo, hi));
            } else {
                ranges.push((lo, lo));
            }
        }
        Ok(Class { ranges, negated, fold: self.flags.fold })
    }

    /// A `[:name:]` class at the current position, or None when there is none.
    fn posix_class(&mut self) -> Result<Option<Vec<(char, char)>>, String> {
        let Some(body) = self.rest().get(2..) else { return Ok(None) };
        let Some(end) = body.find(":]") else { return Ok(None) };
        let name = body.get(..end).unwrap_or("");
        let (negated, bare) = match name.strip_prefix('^') {
            Some(bare) => (true, bare),
            None => (false, name),
        };
        let base = posix_ranges(bare).ok_or_else(|| format!("invalid character class [:{name}:]"))?;
        self.pos += end + 4;
        Ok(Some(if negated { complement(base) } else { base.to_vec() }))
    }

    /// One character of a class, possibly escaped.
    fn class_char(&mut self) -> Result<char, String> {
        let at = self.pos;
        match self.bump() {
            Some('\\') => self.escaped_char(at),
            Some(c) => Ok(c),
            None => Err("missing closing ']' for a character class".to_string()),
        }
    }

    /// An escape outside a class.
    fn escape(&mut self) -> Result<Node, String> {
        let at = self.pos;
        self.bump();
        let assertion = match self.peek() {
            Some(k @ ('d' | 'D' | 'w' | 'W' | 's' | 'S')) => {
                self.bump();
                let ranges = perl_ranges(k.to_ascii_lowercase()).to_vec();
                return Ok(Node::Class(Class { ranges, negated: k.is_ascii_uppercase(), fold: false }));
            }
            Some('b') => Assertion::WordBoundary,
            Some('B') => Assertion::NotWordBoundary,
            Some('A') => Assertion::BeginText,
            Some('z') => Assertion::EndText,
            _ => return Ok(Node::Char(self.escaped_char(at)?, self.flags.fold)),
        };
        self.bump();
        Ok(Node::Assert(assertion))
    }

    /// The character escaped by the backslash at `at`, already consumed.
    fn escaped_char(&mut self, at: usize) -> Result<char, String> {
        let c = self.bump().ok_or_else(|| "trailing backslash at the end of the expression".to_string())?;
        Ok(match c {
            'a' => '\x07',
            'f' => '\x0c',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\x0b',
            'x' => return self.hex_escape(at),
            '0'..='9' => {
                return Err(format!("backreferences and octal escapes are not supported (\\{c} at byte {at})"))
            }
            'p' | 'P' => return Err(format!("Unicode character classes are not supported (\\{c} at byte {at})")),
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => c,
            c => return Err(format!("invalid escape sequence \\{c} at byte {at}")),
        })
    }

    /// The rest of `\xHH` or `\x{H...}`.
    fn hex_escape(&mut self, at: usize) -> Result<char, String> {
        let bad = || format!("invalid hexadecimal escape at byte {at}");
        let digits = if self.eat('{') {
            let rest = self.rest();
            let end = rest.find('}').ok_or_else(bad)?;
            self.pos += end + 1;
            rest.get(..end).unwrap_or("")
        } else {
            let rest = self.rest();
            let len = rest.char_indices().nth(2).map_or(rest.len(), |(i, _)| i);
            self.pos += len;
            let digits = rest.get(..len).unwrap_or("");
            if digits.len() != 2 {
                return Err(bad());
            }
            digits
        };
        if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let code = u32::from_str_radix(digits, 16).map_err(|_| bad())?;
        char::from_u32(code).ok_or_else(bad)
    }
}

/// Builds the NFA program of a parsed pattern.
struct Compiler {
    /// Instructions so far.
    prog: Vec<Inst>,
}

impl Compiler {
    /// Appends `inst`, returning its index, unless the program is full.
    fn push(&mut self, inst: Inst) -> Result<usize, String> {
        if self.prog.len() >= MAX_PROGRAM {
            return Err(format!("expression too large (compiles to more than {MAX_PROGRAM} instructions)"));
        }
        self.prog.push(inst);
        Ok(self.prog.len() - 1)
    }

    /// Replaces the placeholder at `at`.
    fn patch(&mut self, at: usize, inst: Inst) {
        if let Some(slot) = self.prog.get_mut(at) {
            *slot = inst;
        }
    }

    /// Appends the instructions matching `node`.
    fn emit(&mut self, node: &Node) -> Result<(), String> {
        match node {
            Node::Empty => {}
            Node::Char(c, fold) => {
                self.push(Inst::Char(*c, *fold))?;
            }
            Node::Any(nl) => {
                self.push(Inst::Any(*nl))?;
            }
            Node::Class(class) => {
                self.push(Inst::Class(class.clone()))?;
            }
            Node::Assert(a) => {
                self.push(Inst::Assert(*a))?;
            }
            Node::Concat(items) => {
                for item in items {
                    self.emit(item)?;
                }
            }
            Node::Alt(branches) => {
                let mut jumps = Vec::new();
                let mut branches = branches.iter().peekable();
                while let Some(branch) = branches.next() {
                    if branches.peek().is_none() {
                        self.emit(branch)?;
                        break;
                    }
                    let split = self.push(Inst::Split(0, 0))?;
                    self.emit(branch)?;
                    jumps.push(self.push(Inst::Jmp(0))?);
                    let next = self.prog.len();
                    self.patch(split, Inst::Split(split + 1, next));
                }
                let end = self.prog.len();
                for jump in jumps {
                    self.patch(jump, Inst::Jmp(end));
                }
            }
            Node::Repeat(inner, min, max) => {
                for _ in 0..*min {
                    self.emit(inner)?;
                }
                match max {
                    None => {
                        let split = self.push(Inst::Split(0, 0))?;
                        self.emit(inner)?;
                        self.push(Inst::Jmp(split))?;
                        let end = self.prog.len();
                        self.patch(split, Inst::Split(split + 1, end));
                    }
                    Some(max) => {
                        // x{min,max} = x^min (x?)^(max-min): the same language as nested options.
                        let mut splits = Vec::new();
                        for _ in *min..*max {
                            splits.push(self.push(Inst::Split(0, 0))?);
                            self.emit(inner)?;
                        }
                        let end = self.prog.len();
                        for split in splits {
                            self.patch(split, Inst::Split(split + 1, end));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A set of NFA states, in insertion order.
struct Threads {
    /// The states.
    dense: Vec<usize>,
    /// Membership, by state.
    seen: Vec<bool>,
}

impl Threads {
    /// An empty set for a program of `n` instructions.
    fn new(n: usize) -> Threads {
        Threads { dense: Vec::with_capacity(n), seen: vec![false; n] }
    }

    /// Empties the set.
    fn clear(&mut self) {
        for &pc in &self.dense {
            if let Some(seen) = self.seen.get_mut(pc) {
                *seen = false;
            }
        }
        self.dense.clear();
    }

    /// Adds `pc`, returning false if it was already there (or is out of range).
    fn insert(&mut self, pc: usize) -> bool {
        match self.seen.get_mut(pc) {
            Some(seen) if !*seen => {
                *seen = true;
                self.dense.push(pc);
                true
            }
            _ => false,
        }
    }
}

/// Whether `c` is a word character for `\b` (ASCII, as in Go).
fn is_word(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Assertion {
    /// Whether the assertion holds between `prev` and `next` (None at the ends of the text).
    fn holds(self, prev: Option<char>, next: Option<char>) -> bool {
        match self {
            Assertion::BeginText => prev.is_none(),
            Assertion::EndText => next.is_none(),
            Assertion::BeginLine => prev.is_none() || prev == Some('\n'),
            Assertion::EndLine => next.is_none() || next == Some('\n'),
            Assertion::WordBoundary => is_word(prev) != is_word(next),
            Assertion::NotWordBoundary => is_word(prev) == is_word(next),
        }
    }
}

impl Regex {
    /// Parses and compiles `pattern`.
    fn new(pattern: &str) -> Result<Regex, FilterError> {
        let error = |what: String| FilterError::Regex { pattern: pattern.to_string(), what };
        let node = ReParser { src: pattern, pos: 0, flags: Flags::default(), depth: 0 }.parse().map_err(error)?;
        let mut compiler = Compiler { prog: Vec::new() };
        compiler.emit(&node).map_err(error)?;
        compiler.push(Inst::Match).map_err(error)?;
        Ok(Regex { pattern: pattern.to_string(), prog: compiler.prog })
    }

    /// Adds `pc` and the states reachable from it without consuming input to `list`, with `prev`
    /// and `next` around the current position; true when that reaches `Match`.
    fn add(
        &self,
        list: &mut Threads,
        stack: &mut Vec<usize>,
        pc: usize,
        prev: Option<char>,
        next: Option<char>,
    ) -> bool {
        stack.clear();
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if !list.insert(pc) {
                continue;
            }
            match self.prog.get(pc) {
                Some(Inst::Match) => return true,
                Some(Inst::Jmp(to)) => stack.push(*to),
                Some(Inst::Split(a, b)) => {
                    stack.push(*b);
                    stack.push(*a);
                }
                Some(Inst::Assert(a)) if a.holds(prev, next) => stack.push(pc + 1),
                _ => {}
            }
        }
        false
    }

    /// Whether the pattern matches anywhere in `text` (Go's `MatchString`), in
    /// `O(text length * program length)` time.
    fn is_match(&self, text: &str) -> bool {
        let n = self.prog.len();
        let (mut current, mut next_list) = (Threads::new(n), Threads::new(n));
        let mut stack = Vec::new();
        let mut chars = text.chars();
        let mut prev = None;
        let mut cur = chars.next();
        loop {
            // A match may start at any position.
            if self.add(&mut current, &mut stack, 0, prev, cur) {
                return true;
            }
            let Some(c) = cur else { return false };
            let after = chars.next();
            next_list.clear();
            for &pc in &current.dense {
                let consumed = match self.prog.get(pc) {
                    Some(Inst::Char(want, fold)) => char_matches(c, *want, *fold),
                    Some(Inst::Any(nl)) => *nl || c != '\n',
                    Some(Inst::Class(class)) => class.contains(c),
                    _ => false,
                };
                if consumed && self.add(&mut next_list, &mut stack, pc + 1, Some(c), after) {
                    return true;
                }
            }
            std::mem::swap(&mut current, &mut next_list);
            prev = Some(c);
            cur = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot, adapted the way containerd adapts `snapshots.Info`.
    struct Snap {
        name: &'static str,
        parent: &'static str,
        kind: &'static str,
        labels: Vec<(&'static str, &'static str)>,
    }

    impl Adaptor for Snap {
        fn field(&self, path: &[String]) -> Option<String> {
            match path {
                [f] if f == "name" => Some(self.name.to_string()),
                [f] if f == "parent" => Some(self.parent.to_string()),
                [f] if f == "kind" => Some(self.kind.to_string()),
                [f, key] if f == "labels" => {
                    self.labels.iter().find(|(k, _)| *k == key.as_str()).map(|(_, v)| (*v).to_string())
                }
                _ => None,
            }
        }
    }

    fn snap(
        name: &'static str,
        parent: &'static str,
        kind: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Snap {
        Snap { name, parent, kind, labels: labels.to_vec() }
    }

    fn strings(filters: &[&str]) -> Vec<String> {
        filters.iter().copied().map(String::from).collect()
    }

    fn filter(filters: &[&str]) -> Filter {
        match Filter::parse_all(&strings(filters)) {
            Ok(f) => f,
            Err(e) => panic!("{filters:?} should parse: {e}"),
        }
    }

    fn parse_error(input: &str) -> FilterError {
        match Filter::parse_all(&strings(&[input])) {
            Ok(f) => panic!("{input:?} should not parse, got {f:?}"),
            Err(e) => e,
        }
    }

    fn re(pattern: &str, text: &str) -> bool {
        match Regex::new(pattern) {
            Ok(re) => re.is_match(text),
            Err(e) => panic!("{pattern:?} should compile: {e}"),
        }
    }

    fn re_error(pattern: &str) -> String {
        match Regex::new(pattern) {
            Ok(re) => panic!("{pattern:?} should not compile, got {re:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn remote_layer_handshake() {
        let f = filter(&[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="#]);
        let label = [("containerd.io/snapshot.ref", "sha256:abc")];
        assert!(f.matches(&snap("k", "", "active", &label)));
        assert!(!f.matches(&snap("k", "p1", "active", &label)));
        assert!(!f.matches(&snap("k", "", "active", &[("containerd.io/snapshot.ref", "sha256:def")])));
        assert!(!f.matches(&snap("k", "", "active", &[])));
        // The containerd spelling of an empty value means the same.
        let quoted = filter(&[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="""#]);
        assert!(quoted.matches(&snap("k", "", "active", &label)));
        assert!(!quoted.matches(&snap("k", "p1", "active", &label)));
    }

    #[test]
    fn equality_and_regexp() {
        let committed = filter(&["kind==committed"]);
        assert!(committed.matches(&snap("a", "", "committed", &[])));
        assert!(!committed.matches(&snap("a", "", "active", &[])));

        let sha = filter(&["name~=^sha"]);
        assert!(sha.matches(&snap("sha256:0123", "", "committed", &[])));
        assert!(!sha.matches(&snap("xsha256", "", "committed", &[])));

        let digest = filter(&["name~=^sha256:[a-f0-9]{4}$"]);
        assert!(digest.matches(&snap("sha256:beef", "", "committed", &[])));
        assert!(!digest.matches(&snap("sha256:beefy", "", "committed", &[])));

        // containerd's alternative regexp quoting, which allows commas.
        let slashed = filter(&["name~=/^[abc]{1,2}$/"]);
        assert!(slashed.matches(&snap("ab", "", "committed", &[])));
        assert!(!slashed.matches(&snap("abc", "", "committed", &[])));
        // The delimiter is escaped inside such quotes.
        assert!(filter(&[r"name~=|^a\|b$|"]).matches(&snap("b", "", "view", &[])));
        assert!(!filter(&[r"name~=|^a\|b$|"]).matches(&snap("c", "", "view", &[])));
    }

    #[test]
    fn not_equal_and_presence() {
        let not_foo = filter(&["name!=foo"]);
        assert!(not_foo.matches(&snap("bar", "", "active", &[])));
        assert!(!not_foo.matches(&snap("foo", "", "active", &[])));
        // As in containerd, an absent field compares as "".
        let label_not_x = filter(&["labels.a!=x"]);
        assert!(label_not_x.matches(&snap("n", "", "active", &[])));
        assert!(label_not_x.matches(&snap("n", "", "active", &[("a", "y")])));
        assert!(!label_not_x.matches(&snap("n", "", "active", &[("a", "x")])));
        assert!(!filter(&["labels.a!="]).matches(&snap("n", "", "active", &[])));
        // `==` needs the field to be present, even against "".
        assert!(!filter(&["labels.a=="]).matches(&snap("n", "", "active", &[])));
        assert!(filter(&["labels.a=="]).matches(&snap("n", "", "active", &[("a", "")])));

        let present = filter(&["labels.a"]);
        assert!(present.matches(&snap("n", "", "active", &[("a", "")])));
        assert!(!present.matches(&snap("n", "", "active", &[("b", "1")])));
        assert!(filter(&["name"]).matches(&snap("n", "", "active", &[])));
        assert!(!filter(&["nosuchfield"]).matches(&snap("n", "", "active", &[])));
        assert!(filter(&["labels.a,name==n"]).matches(&snap("n", "", "active", &[("a", "1")])));
        assert!(!filter(&["labels.a,name==m"]).matches(&snap("n", "", "active", &[("a", "1")])));
    }

    #[test]
    fn or_of_filters_and_match_all() {
        let f = filter(&["name==a", "name==b,kind==view"]);
        assert!(f.matches(&snap("a", "", "active", &[])));
        assert!(f.matches(&snap("b", "", "view", &[])));
        assert!(!f.matches(&snap("b", "", "active", &[])));
        assert!(!f.matches(&snap("c", "", "view", &[])));

        let s = snap("x", "", "active", &[]);
        assert!(filter(&[]).matches(&s));
        assert!(filter(&[""]).matches(&s));
        assert!(filter(&["", ""]).matches(&s));
        assert!(filter(&["name==nope", ""]).matches(&s));
    }

    #[test]
    fn quoting_and_whitespace() {
        let s = snap("n", "", "active", &[("containerd.io/snapshot.ref", "x, y\"z"), ("é", "v")]);
        assert!(filter(&["labels.`containerd.io/snapshot.ref`==`x, y\"z`"]).matches(&s));
        assert!(filter(&[r#"labels."containerd.io/snapshot.ref"=="x, y\"z""#]).matches(&s));
        assert!(filter(&[r#"labels."\u00e9"==v"#, r#"labels."\xc3\xa9"==v"#]).matches(&s));
        assert!(filter(&[r#"labels."\303\251"==v"#]).matches(&s));
        assert!(filter(&["  name == n ,\tkind==active  ", "name==other"]).matches(&s));
        assert!(filter(&[" labels . \"é\" ~= ^v$ "]).matches(&s));
        assert!(!filter(&["  name == m , kind==active"]).matches(&s));
        // Unquoted values keep their punctuation; a value may start with '/' outside `~=`.
        let p = snap("n", "/var/lib/x.y", "active", &[]);
        assert!(filter(&["parent==/var/lib/x.y"]).matches(&p));
        let labels = snap("n", "", "active", &[("a", "omg_asdf.asdf-qwer=x")]);
        assert!(filter(&["labels.a==omg_asdf.asdf-qwer=x"]).matches(&labels));
    }

    #[test]
    fn regexp_features() {
        // Unanchored search, anchors.
        assert!(re("b", "abc"));
        assert!(!re("^b", "abc"));
        assert!(re("c$", "abc"));
        assert!(!re("b$", "abc"));
        assert!(re("", "anything"));
        assert!(re("^$", ""));
        assert!(!re("^$", "x"));
        // Classes.
        assert!(re("^[a-f0-9]+$", "deadbeef01"));
        assert!(!re("^[a-f0-9]+$", "deadbeefg"));
        assert!(re("^[^/]+$", "abc"));
        assert!(!re("^[^/]+$", "a/c"));
        assert!(re("^[]a]+$", "]a]"));
        assert!(re("^[a-]+$", "a-a"));
        assert!(re(r"^\d+\.\d+$", "1.25"));
        assert!(!re(r"^\d+\.\d+$", "1x25"));
        assert!(re(r"^[\w.-]+$", "snap_1.2-3"));
        assert!(re(r"^\S+\s\S+$", "a b"));
        assert!(re(r"^[[:alpha:]]+[[:digit:]]$", "abc1"));
        assert!(!re(r"^[[:^alpha:]]$", "a"));
        assert!(re(r"^\W$", "!"));
        assert!(re(r"^[\D]$", "x"));
        // Dot and newlines.
        assert!(re("^a.c$", "abc"));
        assert!(!re("^a.c$", "a\nc"));
        assert!(re("(?s)^a.c$", "a\nc"));
        assert!(re("(?m)^c$", "ab\nc"));
        assert!(!re("^c$", "ab\nc"));
        // Alternation and groups.
        assert!(re("^(foo|bar)$", "bar"));
        assert!(!re("^(foo|bar)$", "foobar"));
        assert!(re("^foo|bar$", "foox"));
        assert!(re("^(?:ab)+$", "ababab"));
        assert!(!re("^(?:ab)+$", "ababa"));
        assert!(re("^(?P<x>a|b)c$", "bc"));
        assert!(re("^(a|)$", ""));
        // Quantifiers.
        assert!(re("^ab?c*d+$", "ad"));
        assert!(re("^ab?c*d+$", "abcccdd"));
        assert!(!re("^ab?c*d+$", "abbd"));
        assert!(re("^a{2,3}$", "aaa"));
        assert!(!re("^a{2,3}$", "aaaa"));
        assert!(!re("^a{2,3}$", "a"));
        assert!(re("^a{2}$", "aa"));
        assert!(re("^a{2,}$", "aaaaa"));
        assert!(re("^a*?b+?$", "aab"));
        assert!(re("^a{,2}$", "a{,2}")); // not a repetition: literal, as in Go
                                         // Escapes, flags, boundaries.
        assert!(re(r"^a\.b\*\x41\x{263a}$", "a.b*A☺"));
        assert!(re(r"^\Q*.+\E$", "*.+"));
        assert!(re("(?i)^SHA[A-F]$", "shab"));
        assert!(!re("(?i:a)b", "AB"));
        assert!(re("(?i:a)b", "Ab"));
        assert!(re(r"\bfoo\b", "a foo b"));
        assert!(!re(r"\bfoo\b", "afoob"));
        assert!(re(r"\Bfoo", "afoo"));
        assert!(re(r"\Aab\z", "ab"));
        assert!(re("^é+$", "éé"));
    }

    #[test]
    fn hostile_patterns_stay_linear() {
        let long_a = "a".repeat(20_000);
        assert!(!re("(a*)*b", &long_a));
        assert!(!re("^(a|aa)+$", &format!("{long_a}b")));
        assert!(!re("(x+x+)+y", &"x".repeat(20_000)));
        assert!(re("(a*)*$", &long_a));
        assert!(re_error("((a{1000}){1000}){1000}").contains("too large"));
        assert!(re_error(&"(".repeat(100_000)).contains("nested"));
    }

    #[test]
    fn regexp_errors() {
        for (pattern, what) in [
            ("(", "missing closing ')'"),
            ("a)", "unexpected ')'"),
            ("[a", "missing closing ']'"),
            ("[z-a]", "invalid character class range"),
            ("a**", "nested repetition"),
            ("a{2}{3}", "nested repetition"),
            ("*a", "missing argument"),
            ("{2}", "missing argument"),
            ("a{1001}", "invalid repeat count"),
            ("a{3,2}", "invalid repeat count"),
            ("\\", "trailing backslash"),
            (r"(a)\1", "backreferences"),
            (r"\pL", "Unicode"),
            (r"[\p{Greek}]", "Unicode"),
            (r"\q", "invalid escape"),
            (r"\xZZ", "hexadecimal"),
            ("(?=a)", "unsupported group"),
            ("(?i-)", "unsupported group"),
            ("(?)", "unsupported group"),
            ("[[:nope:]]", "[:nope:]"),
        ] {
            let message = re_error(pattern);
            assert!(message.contains(what), "{pattern:?}: {message}");
            assert!(message.contains(&format!("{pattern:?}")), "{pattern:?}: {message}");
        }
        // Through the filter parser.
        let e = parse_error("name~=(abc");
        assert!(matches!(&e, FilterError::Regex { pattern, .. } if pattern == "(abc"), "{e:?}");
        assert!(e.to_string().contains("\"(abc\""), "{e}");
    }

    #[test]
    fn syntax_errors() {
        for (input, pos, what) in [
            ("==x", 0, "expected a field name"),
            ("labels.", 7, "unexpected end of filter"),
            ("labels..a", 7, "expected a field name"),
            (r#"labels."abc"#, 7, "not terminated"),
            ("labels.`abc", 7, "not terminated"),
            ("name=x", 4, "unsupported operator \"=\""),
            ("name===x", 4, "unsupported operator \"===\""),
            ("name==foo bar", 10, "expected ','"),
            ("name foo", 5, "expected \"==\""),
            ("labels.|foo|==x", 7, "invalid quote"),
            (r#"name=="bad\q""#, 10, "invalid escape"),
            (r#"name=="\xc3""#, 6, "not valid UTF-8"),
            (r#"name=="\u12""#, 7, "invalid numeric escape"),
            (r#"name=="\ud800""#, 7, "not a valid Unicode"),
            ("name~=/abc", 6, "not terminated"),
            ("name==x,", 8, "unexpected end of filter"),
            (",name", 0, "expected a field name"),
            ("   ", 3, "unexpected end of filter"),
            ("name==\u{1}", 6, "expected a value"),
        ] {
            let e = parse_error(input);
            let message = e.to_string();
            match &e {
                FilterError::Syntax { input: i, pos: p, what: w } => {
                    assert_eq!((i.as_str(), *p), (input, pos), "{message}");
                    assert!(w.contains(what), "{input:?}: {message}");
                }
                FilterError::Regex { .. } => panic!("{input:?}: expected a syntax error, got {message}"),
            }
            assert!(message.contains(&format!("{input:?}")), "{message}");
            assert!(message.contains(&format!("at byte {pos}")), "{message}");
        }
        // One bad filter in a list fails the lot.
        assert!(Filter::parse_all(&strings(&["name==a", "name="])).is_err());
        // The marker points at the offending character.
        assert!(parse_error("name=x").to_string().contains("name >|=|< x"));
    }

    #[test]
    fn arbitrary_input_never_panics() {
        const ALPHABET: &[char] = &[
            'a', 'b', 'x', 'u', '1', '.', '=', '!', '~', ',', '"', '`', '/', '|', '\\', '(', ')', '[', ']', '*', '+',
            '?', '{', '}', '^', '$', '-', ':', ' ', '\n', 'é', '<', 'P', 'i',
        ];
        let s = snap("ab", "", "active", &[("a", "b")]);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = move |n: usize| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(state >> 33).unwrap_or(0) % n.max(1)
        };
        for _ in 0..30_000 {
            let len = random(14);
            let input: String =
                (0..len).map(|_| ALPHABET.get(random(ALPHABET.len())).copied().unwrap_or('a')).collect();
            if let Ok(f) = Filter::parse_all(&strings(&[&input])) {
                f.matches(&s);
            }
            if let Ok(r) = Regex::new(&input) {
                r.is_match("ab\nba é");
            }
        }
    }
}
