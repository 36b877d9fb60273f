//! A RON value (as written in scenario files) → the JSON tree serde uses for the same value,
//! so `--set` takes the scenario's own syntax: `Dirichlet(alpha: 0.1)` becomes
//! `{"Dirichlet":{"alpha":0.1}}`, `Some(3)` becomes `3`, `None` `null`, `Iid` `"Iid"`,
//! `(count: 4)` `{"count":4}`, `[a, b]` an array.
//!
//! `ron` itself reads such text only into a known type (its untyped `Value` forgets enum
//! variant names), and an override's type is known only by walking the scenario, so this small
//! parser produces serde's externally tagged JSON, which is then typed by deserialising the
//! whole scenario, exactly as a value written in the file would be.

use serde_json::{Map, Number, Value};

/// Parse `text` as one RON value; `None` when it is not RON.
pub fn parse(text: &str) -> Option<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value()?;
    p.ws();
    (p.i == p.s.len()).then_some(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        loop {
            while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                self.i += 1;
            }
            if self.s[self.i..].starts_with(b"//") {
                while self.peek().is_some_and(|c| c != b'\n') {
                    self.i += 1;
                }
            } else {
                return;
            }
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(Value::String),
            b'[' => {
                self.i += 1;
                self.items(b']').map(Value::Array)
            }
            b'{' => {
                self.i += 1;
                self.map()
            }
            b'(' => {
                self.i += 1;
                self.body()
            }
            c if c == b'-' || c == b'+' || c == b'.' || c.is_ascii_digit() => self.number(),
            c if c.is_ascii_alphabetic() || c == b'_' => self.named(),
            _ => None,
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.ws();
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// `true`, `None`, `Some(v)`, `Variant`, `Variant(…)`.
    fn named(&mut self) -> Option<Value> {
        let name = self.ident()?;
        let open = self.eat(b'(');
        match (name.as_str(), open) {
            ("true", false) => Some(Value::Bool(true)),
            ("false", false) => Some(Value::Bool(false)),
            ("None", false) => Some(Value::Null),
            ("inf", false) | ("NaN", false) => None,
            ("Some", true) => {
                let v = self.value()?;
                self.eat(b',');
                self.eat(b')').then_some(v)
            }
            (_, false) => Some(Value::String(name)),
            (_, true) => {
                // `Variant()`: a struct variant whose fields all take their defaults.
                let inner = match self.body()? {
                    Value::Null => Value::Object(Map::new()),
                    v => v,
                };
                let mut m = Map::new();
                m.insert(name, inner);
                Some(Value::Object(m))
            }
        }
    }

    /// After `(`: named fields → object; one value → itself; several → array; none → null.
    /// A field set to `None` is left out, so it takes its default: `None` for an `Option`,
    /// and the `None` variant of an enum whose default it is (a codec's `None`), which JSON's
    /// null could not select.
    fn body(&mut self) -> Option<Value> {
        let save = self.i;
        if let Some(name) = self.ident() {
            if self.eat(b':') {
                let mut m = Map::new();
                insert_field(&mut m, name, self.value()?);
                while self.eat(b',') {
                    if self.eat(b')') {
                        return Some(Value::Object(m));
                    }
                    let k = self.ident()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    insert_field(&mut m, k, self.value()?);
                }
                return self.eat(b')').then_some(Value::Object(m));
            }
        }
        self.i = save;
        let mut items = self.items(b')')?;
        Some(match items.len() {
            0 => Value::Null,
            1 => items.pop().expect("one item"),
            _ => Value::Array(items),
        })
    }

    fn items(&mut self, close: u8) -> Option<Vec<Value>> {
        let mut out = Vec::new();
        if self.eat(close) {
            return Some(out);
        }
        loop {
            out.push(self.value()?);
            let comma = self.eat(b',');
            if self.eat(close) {
                return Some(out);
            }
            if !comma {
                return None;
            }
        }
    }

    fn map(&mut self) -> Option<Value> {
        let mut m = Map::new();
        if self.eat(b'}') {
            return Some(Value::Object(m));
        }
        loop {
            let k = match self.value()? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if !self.eat(b':') {
                return None;
            }
            m.insert(k, self.value()?);
            let comma = self.eat(b',');
            if self.eat(b'}') {
                return Some(Value::Object(m));
            }
            if !comma {
                return None;
            }
        }
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"+-._".contains(&c))
        {
            self.i += 1;
        }
        let text: String = String::from_utf8_lossy(&self.s[start..self.i]).replace('_', "");
        let text = text.strip_prefix('+').unwrap_or(&text);
        if let Ok(u) = text.parse::<u64>() {
            return Some(Value::Number(u.into()));
        }
        if let Ok(i) = text.parse::<i64>() {
            return Some(Value::Number(i.into()));
        }
        let f: f64 = text.parse().ok()?;
        Number::from_f64(f).map(Value::Number)
    }

    fn string(&mut self) -> Option<String> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'0' => out.push(0),
                        b'"' | b'\\' | b'\'' => out.push(e),
                        _ => return None,
                    }
                }
                _ => out.push(c),
            }
        }
    }
}

/// A struct field of a `--set` value; `None` fields are left out (see [`Parser::body`]).
fn insert_field(m: &mut Map<String, Value>, key: String, v: Value) {
    if !v.is_null() {
        m.insert(key, v);
    }
}
