//! Names an in-memory index holds many times (agents, owners), each stored once and referred to by a small
//! number: an index of a million entries keeps four bytes a name instead of a string.

use std::collections::HashMap;

pub type Sym = u32;

/// Interned names; symbol 0 is the empty name (no owner).
#[derive(Default)]
pub struct Symbols {
    names: Vec<String>,
    symbols: HashMap<String, Sym>,
}

impl Symbols {
    pub fn intern(&mut self, name: &str) -> Sym {
        if let Some(&s) = self.symbols.get(name) {
            return s;
        }
        if self.names.is_empty() {
            self.names.push(String::new());
        }
        let s = self.names.len() as Sym;
        self.names.push(name.to_string());
        self.symbols.insert(name.to_string(), s);
        s
    }

    /// The symbol of a name seen before.
    pub fn symbol(&self, name: &str) -> Option<Sym> {
        self.symbols.get(name).copied()
    }

    pub fn name(&self, symbol: Sym) -> &str {
        self.names.get(symbol as usize).map_or("", String::as_str)
    }
}
