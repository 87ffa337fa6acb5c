//! Structural fingerprints of serde types: what a value of a type looks like
//! on the wire, found without a value.
//!
//! The handshake between a pool and its workers must tell whether both hold
//! a task with the *same* argument and result types. Type names are not
//! enough: a worker built from an older `struct Job { id: u32 }` and a pool
//! built from a newer `struct Job { id: u64, tag: String }` agree on the name
//! `my_app::Job`, and postcard, which writes no field names and no lengths
//! of structs, would happily decode one as the other and return a wrong
//! answer. [`shape_of`] describes the *structure* instead, and
//! [`Shape::fingerprint`] hashes that description into 64 bits.
//!
//! # How the tracer works
//!
//! A `Deserialize` implementation says what it expects by calling one
//! `deserialize_*` method of the deserializer it is given: a derived
//! `struct Job { id: u64, tags: Vec<String> }` calls
//! `deserialize_struct("Job", &["id", "tags"], visitor)`, its visitor then
//! asks for a `u64` and for a sequence, the sequence for strings. The tracer
//! is a deserializer that *records* each call and then feeds the visitor a
//! made-up value of the asked kind (a 1 for an integer, `"0"` for a string,
//! one element for a sequence, `Some` for an option), so that the visitor
//! goes on to ask for the next part. It answers structs as postcard does,
//! as a sequence of the fields in order, and says it is not human readable,
//! as postcard does, so that types with two forms (`IpAddr`) show the form
//! that actually crosses.
//!
//! Named containers (structs, tuple structs, newtype structs, enums) are kept
//! in a table, once each, keyed by their serde name and the type of their
//! visitor, so two different `Point`s of two modules stay apart. Elsewhere
//! the description refers to them by their table entry.
//!
//! **Enums.** One run of `T::deserialize` can take only one variant of each
//! enum it meets, so the tracer runs again and again. Each time it meets an
//! enum it picks, in this order, a variant never taken, a variant whose
//! description still has holes, then one known to go through, so that a
//! failing variant does not hide the rest of the value. Runs stop when the
//! description has no holes left, or when a run learns nothing new a few
//! times in a row (each such run offers other made-up values: 0 instead of
//! 1, `""` instead of `"0"`, ...), or at a fixed bound of runs and steps.
//!
//! **Recursion.** A named container met again *inside itself* (a
//! `Node` among its own `children`, the `Box<List>` in `Cons`) is recorded
//! as a reference and is not explored again: the tracer just builds the
//! smallest value it can, with empty sequences and maps, `None` for options,
//! and, for an enum, a variant known to be a unit variant, else one not yet
//! tried, else one that does not lead back into a container being traced;
//! one nesting deeper it tries the next of that list, so a recursive variant
//! listed first cannot make it loop. A depth bound ends what is left (types
//! with no finite value at all).
//!
//! **What cannot be traced.** Types that need the data to say what they are
//! (`deserialize_any`: untagged and internally tagged enums,
//! `serde_json::Value`; also `deserialize_identifier` and
//! `deserialize_ignored_any`) cannot cross postcard either; the tracer writes
//! `opaque(..)` with their visitor's type name there. A part that never got
//! traced because every made-up value was refused shows as `?`. Either way
//! the shape is *partial* and its canonical form ends with
//! `as <the Rust type name>`, so the fingerprint falls back on the type name
//! for what the structure cannot say. A `Deserialize` that panics on the
//! made-up values gives `opaque(panicked)`: tracing never panics itself.
//!
//! # The canonical form
//!
//! ```text
//! struct Job { id: u64, tags: seq<str>, next: option<^Job>, kind: enum Kind { Quick, Slow(u32), Tree { depth: u8, at: (i64, f64) } } }
//! ```
//!
//! Primitives by serde kind (`bool`, `i8`..`u128`, `f32`, `f64`, `char`,
//! `str`, `bytes`, `unit`), `option<T>`, `seq<T>`, `map<K, V>`, tuples
//! `(A, B)` (`(A,)` for one, `()` for none, `[A; n]` when all elements
//! agree), `struct Name` for a unit struct, `struct Name(T)` for a newtype
//! struct, `struct Name(A, B)` for a tuple struct, `struct Name { .. }`,
//! `enum Name { .. }` with unit, newtype, tuple and struct variants written
//! the same way (a variant the type refuses is followed by `!`). A named
//! container is spelled out where it first appears, left to right, and is
//! `^Name` afterwards; if two different containers share a name, both are
//! numbered by order of appearance (`struct Point#1 {..}`, `^Point#1`). Names
//! that are not plain identifiers are quoted. `Vec<u8>` and `String` as a
//! whole argument or result are written `raw(seq<u8>)` and `raw(str)`: the
//! codec passes them as their bytes, not through serde, so they are not
//! interchangeable with other byte sequences or strings there.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// The structure of a serde type: a canonical text and its 64-bit
/// fingerprint.
///
/// Two builds of the same type give the same shape; a change that postcard
/// would decode differently (a field added, removed, renamed, reordered or of
/// another type, an enum variant added, removed, renamed or changed, an
/// integer of another width) gives another. See the [module](self) docs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    text: String,
    fingerprint: u64,
    complete: bool,
}

// The handshake code reads these; until it does, only tests do.
#[allow(dead_code)]
impl Shape {
    /// The canonical text form, as in the [module](self) docs; for error
    /// messages.
    pub(crate) fn canonical(&self) -> &str {
        &self.text
    }

    /// A stable 64-bit hash (FNV-1a) of the canonical form: equal in every
    /// build, whatever the compiler, for the same type.
    pub(crate) fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// False if some part could not be traced and the shape falls back on
    /// the Rust type name there.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }

    fn new(text: String, complete: bool) -> Shape {
        let fingerprint = fnv1a64(FINGERPRINT_SALT, text.as_bytes());
        Shape {
            text,
            fingerprint,
            complete,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A [`Shape`] traced on first use: what the registry keeps per task, so
/// that registering stays cheap and a registry used only by threads never
/// traces.
pub(crate) struct LazyShape {
    id: std::any::TypeId,
    trace: fn() -> Shape,
    shape: OnceLock<Shape>,
}

/// Shapes traced in this process, by type: a program that builds a
/// registry per pool traces each type once.
static TRACED: std::sync::Mutex<Vec<(std::any::TypeId, Shape)>> = std::sync::Mutex::new(Vec::new());

// The handshake code reads these; until it does, only tests do.
#[allow(dead_code)]
impl LazyShape {
    /// The shape of `T`, not traced yet.
    pub(crate) fn of<T: DeserializeOwned + 'static>() -> LazyShape {
        LazyShape {
            id: std::any::TypeId::of::<T>(),
            trace: shape_of::<T>,
            shape: OnceLock::new(),
        }
    }

    /// The shape, traced now if it was not yet (never panics).
    pub(crate) fn get(&self) -> &Shape {
        self.shape.get_or_init(|| {
            let known = |traced: &[(std::any::TypeId, Shape)]| {
                traced
                    .iter()
                    .find(|(id, _)| *id == self.id)
                    .map(|(_, s)| s.clone())
            };
            let lock = || {
                TRACED
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            };
            if let Some(shape) = known(&lock()) {
                return shape;
            }
            // Traced outside the lock: a type's Deserialize is user code.
            let shape = (self.trace)();
            let mut traced = lock();
            if known(&traced).is_none() {
                traced.push((self.id, shape.clone()));
            }
            shape
        })
    }
}

impl fmt::Debug for LazyShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shape.get() {
            Some(shape) => fmt::Debug::fmt(shape, f),
            None => f.write_str("LazyShape(not traced yet)"),
        }
    }
}

/// The shape of `T`, traced through `T::deserialize` without a value.
///
/// Never panics, whatever `T`'s `Deserialize` does (a panic in it makes the
/// shape `opaque(panicked)`), and always ends: runs, steps and nesting are
/// bounded.
pub(crate) fn shape_of<T: DeserializeOwned + 'static>() -> Shape {
    let type_name = std::any::type_name::<T>();
    let traced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(trace::<T>));
    let (text, complete) = match traced {
        Ok((text, complete)) => (text, complete),
        Err(_) => ("opaque(panicked)".to_string(), false),
    };
    // The codec passes these two as their bytes (see codec::encode/decode).
    let text = if TypeId::of::<T>() == TypeId::of::<Vec<u8>>()
        || TypeId::of::<T>() == TypeId::of::<String>()
    {
        format!("raw({text})")
    } else {
        text
    };
    if complete {
        Shape::new(text, true)
    } else {
        Shape::new(format!("{text} as {type_name}"), false)
    }
}

/// Mixed into every fingerprint: a new canonical syntax gets a new salt.
const FINGERPRINT_SALT: &[u8] = b"twinpool shape 1\n";

/// 64-bit FNV-1a over `salt` then `bytes`.
fn fnv1a64(salt: &[u8], bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in salt.iter().chain(bytes) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// At most this many runs of `T::deserialize`.
const MAX_RUNS: u32 = 4096;
/// At most this many `deserialize_*` calls over all runs.
const MAX_STEPS: u64 = 250_000;
/// At most this many nested `deserialize_*` calls. A debug build needs
/// 1.5 KiB of stack or more per level, and the tracer may run on a thread
/// with a small stack.
const MAX_DEPTH: u32 = 64;
/// Longer tuples (big arrays) are not traced.
const MAX_TUPLE: usize = 1 << 16;

/// Runs in a row that learn nothing before giving up; each uses other
/// made-up values.
const MAX_ATTEMPTS: u32 = 4;

/// `len` untraced places, or an error for a tuple longer than [`MAX_TUPLE`].
fn places(len: usize) -> Result<Vec<Format>, TraceError> {
    if len > MAX_TUPLE {
        return Err(TraceError(format!(
            "a tuple of {len} elements is too long to trace"
        )));
    }
    Ok(vec![Format::Unknown; len])
}

/// Runs the tracer on `T` until its description is whole or the bounds are
/// reached; the canonical text and whether it is whole.
fn trace<T: DeserializeOwned>() -> (String, bool) {
    let mut st = State::default();
    let mut root = Format::Unknown;
    for _ in 0..MAX_RUNS {
        st.changed = false;
        st.depth = 0;
        let mut local = Format::Unknown;
        let _ = T::deserialize(Tracer {
            st: &mut st,
            slot: &mut local,
            minimal: false,
        });
        st.changed |= merge(&mut root, local);
        st.compute_needs();
        if !st.incomplete(&root) || st.steps >= MAX_STEPS {
            break;
        }
        if !st.changed {
            st.attempt += 1;
            if st.attempt >= MAX_ATTEMPTS {
                break;
            }
        }
    }
    st.compute_needs();
    let text = Printer::print(&st, &root);
    let complete = !st.incomplete(&root) && !st.has_opaque(&root);
    (text, complete)
}

/// The serde kind of a primitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prim {
    Bool,
    I8,
    I16,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
    U128,
    F32,
    F64,
    Char,
    Str,
    Bytes,
    Unit,
}

impl Prim {
    fn name(self) -> &'static str {
        match self {
            Prim::Bool => "bool",
            Prim::I8 => "i8",
            Prim::I16 => "i16",
            Prim::I32 => "i32",
            Prim::I64 => "i64",
            Prim::I128 => "i128",
            Prim::U8 => "u8",
            Prim::U16 => "u16",
            Prim::U32 => "u32",
            Prim::U64 => "u64",
            Prim::U128 => "u128",
            Prim::F32 => "f32",
            Prim::F64 => "f64",
            Prim::Char => "char",
            Prim::Str => "str",
            Prim::Bytes => "bytes",
            Prim::Unit => "unit",
        }
    }
}

/// The description of one place in a value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Format {
    /// Not traced (yet).
    Unknown,
    Prim(Prim),
    Option(Box<Format>),
    Seq(Box<Format>),
    Map(Box<Format>, Box<Format>),
    Tuple(Vec<Format>),
    UnitStruct(&'static str),
    /// A named container: an index into [`State::containers`].
    Named(usize),
    /// Cannot be traced; the reason or the visitor's type name.
    Opaque(&'static str),
}

/// What a named container holds.
#[derive(Debug)]
enum Body {
    Newtype(Format),
    TupleStruct(Vec<Format>),
    Struct(&'static [&'static str], Vec<Format>),
    Enum(&'static [&'static str], Vec<Variant>),
}

/// What is known of one enum variant.
#[derive(Clone, Debug, Default)]
struct Variant {
    /// `None` until some run takes the variant.
    body: Option<VariantBody>,
    /// The attempt in which the last run through it failed, if it failed.
    failed_at: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum VariantBody {
    /// The type refuses this variant (it failed before reading its content).
    Rejected,
    Unit,
    Newtype(Format),
    Tuple(Vec<Format>),
    Struct(&'static [&'static str], Vec<Format>),
}

/// The kind of a named container, part of its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Newtype,
    TupleStruct,
    Struct,
    Enum,
}

#[derive(Debug)]
struct Container {
    name: &'static str,
    body: Body,
    /// Being traced in full on the current path: meeting it again cuts.
    on_stack: bool,
    /// How many cut (smallest-value) runs through it are on the current path.
    cut_depth: usize,
}

/// Everything the tracer has learnt, over all runs.
#[derive(Default)]
struct State {
    containers: Vec<Container>,
    index: HashMap<(Kind, &'static str, &'static str), usize>,
    /// Per container: it, or something it reaches, still has holes.
    needs: Vec<bool>,
    /// Which made-up values to offer (see [`pick`]).
    attempt: u32,
    depth: u32,
    steps: u64,
    /// Something new was learnt in this run.
    changed: bool,
}

/// The error of the tracer's deserializer.
#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TraceError(msg.to_string())
    }
}

impl State {
    /// Counts a step and enters one nesting level; an error past the
    /// bounds. Pair with [`State::leave`].
    fn enter(&mut self) -> Result<(), TraceError> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(TraceError("tracing took too many steps".into()));
        }
        if self.depth >= MAX_DEPTH {
            return Err(TraceError("tracing nested too deep".into()));
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// The table entry of a named container, added if new.
    fn container(
        &mut self,
        kind: Kind,
        name: &'static str,
        visitor: &'static str,
        body: impl FnOnce() -> Body,
    ) -> usize {
        if let Some(&id) = self.index.get(&(kind, name, visitor)) {
            return id;
        }
        let id = self.containers.len();
        self.containers.push(Container {
            name,
            body: body(),
            on_stack: false,
            cut_depth: 0,
        });
        self.index.insert((kind, name, visitor), id);
        self.changed = true;
        id
    }

    /// Marks `id` as being traced; true if it already was (then its value
    /// is to be the smallest possible). Pair with [`State::unmark`].
    fn mark(&mut self, id: usize) -> bool {
        match self.containers.get_mut(id) {
            Some(c) if c.on_stack => {
                c.cut_depth += 1;
                true
            }
            Some(c) => {
                c.on_stack = true;
                false
            }
            None => true,
        }
    }

    fn unmark(&mut self, id: usize, cut: bool) {
        if let Some(c) = self.containers.get_mut(id) {
            if cut {
                c.cut_depth = c.cut_depth.saturating_sub(1);
            } else {
                c.on_stack = false;
            }
        }
    }

    /// Merges what one trace of container `id` found into the table.
    fn merge_body(&mut self, id: usize, new: Vec<Format>) {
        let changed = match self.containers.get_mut(id).map(|c| &mut c.body) {
            Some(Body::TupleStruct(old)) | Some(Body::Struct(_, old)) => merge_all(old, new),
            Some(Body::Newtype(old)) => new.into_iter().next().is_some_and(|f| merge(old, f)),
            _ => false,
        };
        self.changed |= changed;
    }

    /// Merges what one trace of variant `index` of enum `id` found.
    fn merge_variant(&mut self, id: usize, index: usize, new: VariantBody, failed: bool) {
        let attempt = self.attempt;
        let Some(Body::Enum(_, variants)) = self.containers.get_mut(id).map(|c| &mut c.body) else {
            return;
        };
        let Some(v) = variants.get_mut(index) else {
            return;
        };
        v.failed_at = failed.then_some(attempt);
        let changed = match (&mut v.body, new) {
            (slot @ None, new) => {
                *slot = Some(new);
                true
            }
            (Some(VariantBody::Newtype(a)), VariantBody::Newtype(b)) => merge(a, b),
            (Some(VariantBody::Tuple(a)), VariantBody::Tuple(b))
            | (Some(VariantBody::Struct(_, a)), VariantBody::Struct(_, b)) => merge_all(a, b),
            // Refused once, taken another time (with other made-up values).
            (Some(old @ VariantBody::Rejected), new) if new != VariantBody::Rejected => {
                *old = new;
                true
            }
            _ => false,
        };
        self.changed |= changed;
    }

    /// The variant to take in enum `id`: `None` if there is none to take.
    fn choose_variant(&self, id: usize, cut: bool) -> Option<usize> {
        let c = self.containers.get(id)?;
        let Body::Enum(_, variants) = &c.body else {
            return None;
        };
        if !cut {
            return Some(self.choose_to_explore(variants));
        }
        // The smallest value: a unit variant, else one never taken, else one
        // not leading back into a container being traced. Each cut nesting
        // of this enum takes the next in this order.
        let rank = |v: &Variant| match &v.body {
            Some(VariantBody::Unit) => 0,
            None => 1,
            Some(VariantBody::Rejected) => 5,
            Some(_) if v.failed_at.is_some() => 4,
            Some(b) if !self.variant_reaches_stack(b) => 2,
            Some(_) => 3,
        };
        let mut order: Vec<(u8, usize)> = variants
            .iter()
            .enumerate()
            .map(|(i, v)| (rank(v), i))
            .collect();
        order.sort_unstable();
        order
            .get(c.cut_depth.saturating_sub(1))
            .map(|&(_, index)| index)
    }

    /// The variant to take when exploring: one never taken; else one with
    /// a hole of its own; else one that reaches a hole without going
    /// through a container being traced (those are cut, so their holes
    /// cannot be filled from here); a hole is tried once per attempt. Else
    /// one known to go through, so that the run reaches what comes after.
    fn choose_to_explore(&self, variants: &[Variant]) -> usize {
        let fresh = |v: &Variant| v.failed_at != Some(self.attempt);
        let mut best = (u8::MAX, 0);
        for (i, v) in variants.iter().enumerate() {
            let rank = match &v.body {
                None => 0,
                Some(b) if fresh(v) && variant_formats(b).any(has_unknown) => 1,
                Some(_) if v.failed_at.is_none() => 3,
                Some(_) => 4,
            };
            best = best.min((rank, i));
        }
        if best.0 <= 1 {
            return best.1;
        }
        variants
            .iter()
            .position(|v| {
                fresh(v)
                    && v.body
                        .as_ref()
                        .is_some_and(|b| self.reaches_hole(variant_formats(b)))
            })
            .unwrap_or(best.1)
    }

    /// True if a hole can be reached from `formats` through containers not
    /// being traced.
    fn reaches_hole<'f>(&'f self, formats: impl Iterator<Item = &'f Format>) -> bool {
        let mut todo = Vec::new();
        let hole = |f: &Format, todo: &mut Vec<usize>| {
            let mut found = false;
            walk_all(f, &mut |g| match g {
                Format::Unknown => found = true,
                Format::Named(id) => todo.push(*id),
                _ => {}
            });
            found
        };
        for f in formats {
            if hole(f, &mut todo) {
                return true;
            }
        }
        let mut seen = vec![false; self.containers.len()];
        while let Some(id) = todo.pop() {
            match seen.get_mut(id) {
                Some(s) if !*s => *s = true,
                _ => continue,
            }
            let Some(c) = self.containers.get(id) else {
                continue;
            };
            if c.on_stack || !self.needs.get(id).copied().unwrap_or(true) {
                continue;
            }
            let found = match &c.body {
                Body::Newtype(f) => hole(f, &mut todo),
                Body::TupleStruct(fs) | Body::Struct(_, fs) => {
                    fs.iter().fold(false, |o, f| hole(f, &mut todo) | o)
                }
                Body::Enum(_, vs) => vs.iter().fold(false, |o, v| match &v.body {
                    None => true,
                    Some(b) => variant_formats(b).fold(o, |o, f| hole(f, &mut todo) | o),
                }),
            };
            if found {
                return true;
            }
        }
        false
    }

    /// Recomputes [`State::needs`]: the containers that reach a hole.
    fn compute_needs(&mut self) {
        let mut needs = vec![false; self.containers.len()];
        loop {
            let mut grew = false;
            for id in 0..needs.len() {
                if needs.get(id).copied().unwrap_or(true) {
                    continue;
                }
                let holes = self.containers.get(id).is_some_and(|c| match &c.body {
                    Body::Newtype(f) => incomplete_with(f, &needs),
                    Body::TupleStruct(fs) | Body::Struct(_, fs) => {
                        fs.iter().any(|f| incomplete_with(f, &needs))
                    }
                    Body::Enum(_, vs) => vs.iter().any(|v| match &v.body {
                        None => true,
                        Some(b) => variant_incomplete_with(b, &needs),
                    }),
                });
                if holes {
                    if let Some(n) = needs.get_mut(id) {
                        *n = true;
                    }
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        self.needs = needs;
    }

    fn incomplete(&self, f: &Format) -> bool {
        incomplete_with(f, &self.needs)
    }

    /// True if `b` names, outside any container, one being traced.
    fn variant_reaches_stack(&self, b: &VariantBody) -> bool {
        let on_stack = |f: &Format| {
            let mut hit = false;
            walk(f, &mut |id| {
                hit |= self.containers.get(id).is_some_and(|c| c.on_stack);
            });
            hit
        };
        variant_formats(b).any(on_stack)
    }

    /// True if `f` reaches an opaque part, through containers too.
    fn has_opaque(&self, f: &Format) -> bool {
        let mut seen = vec![false; self.containers.len()];
        let mut todo = Vec::new();
        let mut found = opaque_here(f, &mut todo);
        while let Some(id) = todo.pop() {
            if found {
                break;
            }
            match seen.get_mut(id) {
                Some(s) if !*s => *s = true,
                _ => continue,
            }
            let Some(c) = self.containers.get(id) else {
                continue;
            };
            found = match &c.body {
                Body::Newtype(f) => opaque_here(f, &mut todo),
                Body::TupleStruct(fs) | Body::Struct(_, fs) => {
                    fs.iter().fold(false, |o, f| opaque_here(f, &mut todo) | o)
                }
                Body::Enum(_, vs) => vs.iter().fold(false, |o, v| match &v.body {
                    Some(b) => variant_formats(b).fold(o, |o, f| opaque_here(f, &mut todo) | o),
                    None => o,
                }),
            };
        }
        found
    }
}

/// True if `f` has an opaque part outside containers; pushes the containers
/// it names onto `todo`.
fn opaque_here(f: &Format, todo: &mut Vec<usize>) -> bool {
    let mut found = false;
    walk_all(f, &mut |g| match g {
        Format::Opaque(_) => found = true,
        Format::Named(id) => todo.push(*id),
        _ => {}
    });
    found
}

/// Calls `each` on the id of every container `f` names directly.
fn walk(f: &Format, each: &mut impl FnMut(usize)) {
    walk_all(f, &mut |g| {
        if let Format::Named(id) = g {
            each(*id);
        }
    });
}

/// Calls `each` on `f` and every format inside it (not inside containers).
fn walk_all(f: &Format, each: &mut impl FnMut(&Format)) {
    each(f);
    match f {
        Format::Option(a) | Format::Seq(a) => walk_all(a, each),
        Format::Map(k, v) => {
            walk_all(k, each);
            walk_all(v, each);
        }
        Format::Tuple(fs) => fs.iter().for_each(|f| walk_all(f, each)),
        _ => {}
    }
}

/// The formats a variant holds.
fn variant_formats(b: &VariantBody) -> std::slice::Iter<'_, Format> {
    match b {
        VariantBody::Newtype(f) => std::slice::from_ref(f).iter(),
        VariantBody::Tuple(fs) | VariantBody::Struct(_, fs) => fs.iter(),
        VariantBody::Rejected | VariantBody::Unit => [].iter(),
    }
}

/// True if `f` has a hole of its own (not inside a container).
fn has_unknown(f: &Format) -> bool {
    let mut found = false;
    walk_all(f, &mut |g| found |= *g == Format::Unknown);
    found
}

/// True if `f` has a hole or names a container in `needs`.
fn incomplete_with(f: &Format, needs: &[bool]) -> bool {
    let mut holes = false;
    walk_all(f, &mut |g| match g {
        Format::Unknown => holes = true,
        Format::Named(id) => holes |= needs.get(*id).copied().unwrap_or(true),
        _ => {}
    });
    holes
}

fn variant_incomplete_with(b: &VariantBody, needs: &[bool]) -> bool {
    variant_formats(b).any(|f| incomplete_with(f, needs))
}

/// Adds what `new` knows to `into`; true if that taught something.
/// Two different known descriptions of one place make it opaque.
fn merge(into: &mut Format, new: Format) -> bool {
    if new == Format::Unknown {
        return false;
    }
    if *into == Format::Unknown {
        *into = new;
        return true;
    }
    match (into, new) {
        (Format::Option(a), Format::Option(b)) | (Format::Seq(a), Format::Seq(b)) => merge(a, *b),
        (Format::Map(k, v), Format::Map(k2, v2)) => merge(k, *k2) | merge(v, *v2),
        (Format::Tuple(a), Format::Tuple(b)) if a.len() == b.len() => merge_all(a, b),
        (a, b) if *a == b => false,
        (a, _) => {
            let inconsistent = Format::Opaque("inconsistent");
            let changed = *a != inconsistent;
            *a = inconsistent;
            changed
        }
    }
}

/// [`merge`] element by element; a length mismatch teaches nothing.
fn merge_all(into: &mut [Format], new: Vec<Format>) -> bool {
    if into.len() != new.len() {
        return false;
    }
    into.iter_mut()
        .zip(new)
        .fold(false, |changed, (a, b)| merge(a, b) | changed)
}

/// The made-up value of a kind for the current attempt.
fn pick<T: Copy, const N: usize>(attempt: u32, candidates: [T; N]) -> Option<T> {
    candidates
        .get(attempt as usize % N.max(1))
        .or(candidates.first())
        .copied()
}

/// The tracing deserializer for one place: records what the visitor asks
/// for into `slot`, and feeds it a made-up value.
struct Tracer<'a> {
    st: &'a mut State,
    slot: &'a mut Format,
    /// Build the smallest value (inside a cut), not one that explores.
    minimal: bool,
}

macro_rules! primitive {
    ($method:ident, $visit:ident, $prim:ident, [$($c:expr),+ $(,)?]) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
            self.st.enter()?;
            self.st.leave();
            *self.slot = Format::Prim(Prim::$prim);
            match pick(self.st.attempt, [$($c),+]) {
                Some(v) => visitor.$visit(v),
                None => Err(TraceError("no value".into())),
            }
        }
    };
}

impl<'a> Tracer<'a> {
    /// Traces a named container whose content the visitor reads as a
    /// sequence of `len` places (tuple struct, struct).
    fn container_seq<'de, V: Visitor<'de>>(
        self,
        id: usize,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        *self.slot = Format::Named(id);
        let mut places = match places(len) {
            Ok(places) => places,
            Err(e) => {
                self.st.leave();
                return Err(e);
            }
        };
        let cut = self.st.mark(id);
        let result = visitor.visit_seq(Places {
            st: &mut *self.st,
            places: &mut places,
            next: 0,
            minimal: cut,
        });
        self.st.unmark(id, cut);
        self.st.merge_body(id, places);
        self.st.leave();
        result
    }
}

impl<'de, 'a> de::Deserializer<'de> for Tracer<'a> {
    type Error = TraceError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        *self.slot = Format::Opaque(std::any::type_name::<V>());
        Err(TraceError(
            "the type needs self-describing data (deserialize_any)".into(),
        ))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_any(visitor)
    }

    primitive!(deserialize_bool, visit_bool, Bool, [false, true]);
    primitive!(deserialize_i8, visit_i8, I8, [1, 0, -1]);
    primitive!(deserialize_i16, visit_i16, I16, [1, 0, -1]);
    primitive!(deserialize_i32, visit_i32, I32, [1, 0, -1]);
    primitive!(deserialize_i64, visit_i64, I64, [1, 0, -1]);
    primitive!(deserialize_i128, visit_i128, I128, [1, 0, -1]);
    primitive!(deserialize_u8, visit_u8, U8, [1, 0, u8::MAX]);
    primitive!(deserialize_u16, visit_u16, U16, [1, 0, u16::MAX]);
    primitive!(deserialize_u32, visit_u32, U32, [1, 0, u32::MAX]);
    primitive!(deserialize_u64, visit_u64, U64, [1, 0, u64::MAX]);
    primitive!(deserialize_u128, visit_u128, U128, [1, 0, u128::MAX]);
    primitive!(deserialize_f32, visit_f32, F32, [1.0, 0.0, -1.0]);
    primitive!(deserialize_f64, visit_f64, F64, [1.0, 0.0, -1.0]);
    primitive!(deserialize_char, visit_char, Char, ['a', '0', ' ']);
    primitive!(
        deserialize_str,
        visit_str,
        Str,
        ["0", "", "1970-01-01T00:00:00Z", "http://localhost/"]
    );
    primitive!(
        deserialize_bytes,
        visit_bytes,
        Bytes,
        [&[0u8; 16][..], &[][..], &[1u8][..]]
    );

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.st.enter()?;
        self.st.leave();
        *self.slot = Format::Prim(Prim::Unit);
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.st.enter()?;
        self.st.leave();
        *self.slot = Format::UnitStruct(name);
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.st.enter()?;
        let mut inner = Format::Unknown;
        let result = if self.minimal {
            visitor.visit_none()
        } else {
            visitor.visit_some(Tracer {
                st: &mut *self.st,
                slot: &mut inner,
                minimal: false,
            })
        };
        *self.slot = Format::Option(Box::new(inner));
        self.st.leave();
        result
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.st.enter()?;
        let mut element = [Format::Unknown];
        let places: &mut [Format] = if self.minimal { &mut [] } else { &mut element };
        let result = visitor.visit_seq(Places {
            st: &mut *self.st,
            places,
            next: 0,
            minimal: self.minimal,
        });
        let [element] = element;
        *self.slot = Format::Seq(Box::new(element));
        self.st.leave();
        result
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.st.enter()?;
        let (mut key, mut value) = (Format::Unknown, Format::Unknown);
        let result = visitor.visit_map(Entry {
            st: &mut *self.st,
            key: &mut key,
            value: &mut value,
            left: !self.minimal,
            minimal: self.minimal,
        });
        *self.slot = Format::Map(Box::new(key), Box::new(value));
        self.st.leave();
        result
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.st.enter()?;
        let mut places = match places(len) {
            Ok(places) => places,
            Err(e) => {
                *self.slot = Format::Opaque("a tuple too long to trace");
                self.st.leave();
                return Err(e);
            }
        };
        let result = visitor.visit_seq(Places {
            st: &mut *self.st,
            places: &mut places,
            next: 0,
            minimal: self.minimal,
        });
        *self.slot = Format::Tuple(places);
        self.st.leave();
        result
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.st.enter()?;
        let id = self
            .st
            .container(Kind::Newtype, name, std::any::type_name::<V>(), || {
                Body::Newtype(Format::Unknown)
            });
        *self.slot = Format::Named(id);
        let cut = self.st.mark(id);
        let mut inner = Format::Unknown;
        let result = visitor.visit_newtype_struct(Tracer {
            st: &mut *self.st,
            slot: &mut inner,
            minimal: cut,
        });
        self.st.unmark(id, cut);
        self.st.merge_body(id, vec![inner]);
        self.st.leave();
        result
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.st.enter()?;
        if len > MAX_TUPLE {
            *self.slot = Format::Opaque("a tuple struct too long to trace");
            self.st.leave();
            return Err(TraceError(format!("{name} is too long to trace")));
        }
        let id = self
            .st
            .container(Kind::TupleStruct, name, std::any::type_name::<V>(), || {
                Body::TupleStruct(vec![Format::Unknown; len])
            });
        self.container_seq(id, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.st.enter()?;
        let id = self
            .st
            .container(Kind::Struct, name, std::any::type_name::<V>(), || {
                Body::Struct(fields, vec![Format::Unknown; fields.len()])
            });
        self.container_seq(id, fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.st.enter()?;
        let id = self
            .st
            .container(Kind::Enum, name, std::any::type_name::<V>(), || {
                Body::Enum(variants, vec![Variant::default(); variants.len()])
            });
        *self.slot = Format::Named(id);
        let cut = self.st.mark(id);
        let Some(index) = self.st.choose_variant(id, cut) else {
            self.st.unmark(id, cut);
            self.st.leave();
            return Err(TraceError(format!("no variant of {name} to take")));
        };
        let mut body = None;
        let result = visitor.visit_enum(Choice {
            st: &mut *self.st,
            index,
            body: &mut body,
            minimal: cut,
        });
        self.st.unmark(id, cut);
        let failed = result.is_err();
        let body = body.unwrap_or(if failed {
            VariantBody::Rejected
        } else {
            VariantBody::Unit
        });
        self.st.merge_variant(id, index, body, failed);
        self.st.leave();
        result
    }
}

/// Feeds a visitor the places of a sequence, tuple or struct, each traced
/// into its slot. A sequence has one place (none when minimal).
struct Places<'a> {
    st: &'a mut State,
    places: &'a mut [Format],
    next: usize,
    minimal: bool,
}

impl<'de, 'a> SeqAccess<'de> for Places<'a> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        let Some(slot) = self.places.get_mut(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        seed.deserialize(Tracer {
            st: &mut *self.st,
            slot,
            minimal: self.minimal,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.places.len().saturating_sub(self.next))
    }
}

/// Feeds a visitor a map of one entry (none when minimal).
struct Entry<'a> {
    st: &'a mut State,
    key: &'a mut Format,
    value: &'a mut Format,
    left: bool,
    minimal: bool,
}

impl<'de, 'a> MapAccess<'de> for Entry<'a> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        if !std::mem::take(&mut self.left) {
            return Ok(None);
        }
        seed.deserialize(Tracer {
            st: &mut *self.st,
            slot: &mut *self.key,
            minimal: self.minimal,
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        seed.deserialize(Tracer {
            st: &mut *self.st,
            slot: &mut *self.value,
            minimal: self.minimal,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(usize::from(self.left))
    }
}

/// Feeds an enum visitor the chosen variant, and records what the variant
/// holds into `body`.
struct Choice<'a> {
    st: &'a mut State,
    index: usize,
    body: &'a mut Option<VariantBody>,
    minimal: bool,
}

impl<'de, 'a> EnumAccess<'de> for Choice<'a> {
    type Error = TraceError;
    type Variant = Choice<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Choice<'a>), TraceError> {
        // As postcard: the variant's index, as a u32.
        let index =
            u32::try_from(self.index).map_err(|_| TraceError("too many variants".into()))?;
        let value = seed.deserialize(IntoDeserializer::<TraceError>::into_deserializer(index))?;
        Ok((value, self))
    }
}

impl<'de, 'a> VariantAccess<'de> for Choice<'a> {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        *self.body = Some(VariantBody::Unit);
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, TraceError> {
        let mut inner = Format::Unknown;
        let result = seed.deserialize(Tracer {
            st: &mut *self.st,
            slot: &mut inner,
            minimal: self.minimal,
        });
        *self.body = Some(VariantBody::Newtype(inner));
        result
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let mut places = places(len)?;
        let result = visitor.visit_seq(Places {
            st: &mut *self.st,
            places: &mut places,
            next: 0,
            minimal: self.minimal,
        });
        *self.body = Some(VariantBody::Tuple(places));
        result
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let mut places = vec![Format::Unknown; fields.len()];
        let result = visitor.visit_seq(Places {
            st: &mut *self.st,
            places: &mut places,
            next: 0,
            minimal: self.minimal,
        });
        *self.body = Some(VariantBody::Struct(fields, places));
        result
    }
}

/// Writes the canonical form.
struct Printer<'s> {
    st: &'s State,
    /// Per container: its number among those of its name, once spelled
    /// out.
    number: Vec<Option<usize>>,
    /// Per name: how many containers of that name are spelled out.
    defined: HashMap<&'static str, usize>,
    /// Per container: its name is shared with another container printed.
    shared_name: Vec<bool>,
    out: String,
}

impl<'s> Printer<'s> {
    fn print(st: &'s State, root: &Format) -> String {
        // A first pass finds which printed containers share a name.
        let mut first = Printer {
            st,
            number: vec![None; st.containers.len()],
            defined: HashMap::new(),
            shared_name: vec![false; st.containers.len()],
            out: String::new(),
        };
        first.format(root);
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (id, c) in st.containers.iter().enumerate() {
            if first.number.get(id).is_some_and(Option::is_some) {
                *by_name.entry(c.name).or_default() += 1;
            }
        }
        let shared_name = st
            .containers
            .iter()
            .map(|c| by_name.get(c.name).is_some_and(|&n| n > 1))
            .collect();
        let mut printer = Printer {
            st,
            number: vec![None; st.containers.len()],
            defined: HashMap::new(),
            shared_name,
            out: String::new(),
        };
        printer.format(root);
        printer.out
    }

    fn name(&mut self, name: &str) {
        let plain = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if plain {
            self.out.push_str(name);
        } else {
            self.out.push_str(&format!("{name:?}"));
        }
    }

    fn container_name(&mut self, id: usize, name: &str) {
        self.name(name);
        if self.shared_name.get(id).copied().unwrap_or(false) {
            if let Some(Some(n)) = self.number.get(id) {
                self.out.push_str(&format!("#{n}"));
            }
        }
    }

    fn list(&mut self, open: &str, items: &[Format], close: &str) {
        self.out.push_str(open);
        for (i, f) in items.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.format(f);
        }
        if items.len() == 1 && open == "(" {
            self.out.push(',');
        }
        self.out.push_str(close);
    }

    /// `(A, B)`, `(A,)`, `()`, or `[A; n]` when all agree.
    fn tuple(&mut self, items: &[Format]) {
        match items {
            [first, rest @ ..] if !rest.is_empty() && rest.iter().all(|f| f == first) => {
                self.out.push('[');
                self.format(first);
                self.out.push_str(&format!("; {}]", items.len()));
            }
            _ => self.list("(", items, ")"),
        }
    }

    /// `{ a: A, b: B }` (`{}` when empty).
    fn fields(&mut self, names: &[&str], items: &[Format]) {
        if items.is_empty() {
            self.out.push_str(" {}");
            return;
        }
        self.out.push_str(" { ");
        for (i, f) in items.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.name(names.get(i).copied().unwrap_or("?"));
            self.out.push_str(": ");
            self.format(f);
        }
        self.out.push_str(" }");
    }

    /// A newtype's or newtype variant's `(T)`.
    fn newtype(&mut self, inner: &Format) {
        self.out.push('(');
        self.format(inner);
        self.out.push(')');
    }

    fn format(&mut self, f: &Format) {
        match f {
            Format::Unknown => self.out.push('?'),
            Format::Prim(p) => self.out.push_str(p.name()),
            Format::Option(a) => {
                self.out.push_str("option<");
                self.format(a);
                self.out.push('>');
            }
            Format::Seq(a) => {
                self.out.push_str("seq<");
                self.format(a);
                self.out.push('>');
            }
            Format::Map(k, v) => {
                self.out.push_str("map<");
                self.format(k);
                self.out.push_str(", ");
                self.format(v);
                self.out.push('>');
            }
            Format::Tuple(items) => self.tuple(items),
            Format::UnitStruct(name) => {
                self.out.push_str("struct ");
                self.name(name);
            }
            Format::Opaque(what) => {
                self.out.push_str("opaque(");
                self.out.push_str(what);
                self.out.push(')');
            }
            Format::Named(id) => self.named(*id),
        }
    }

    fn named(&mut self, id: usize) {
        let st = self.st;
        let Some(c) = st.containers.get(id) else {
            self.out.push('?');
            return;
        };
        if self.number.get(id).is_some_and(Option::is_some) {
            self.out.push('^');
            self.container_name(id, c.name);
            return;
        }
        let count = self.defined.entry(c.name).or_default();
        if let Some(n) = self.number.get_mut(id) {
            *n = Some(*count);
        }
        *count += 1;
        match &c.body {
            Body::Newtype(inner) => {
                self.out.push_str("struct ");
                self.container_name(id, c.name);
                self.newtype(inner);
            }
            Body::TupleStruct(items) => {
                self.out.push_str("struct ");
                self.container_name(id, c.name);
                self.list("(", items, ")");
            }
            Body::Struct(names, items) => {
                self.out.push_str("struct ");
                self.container_name(id, c.name);
                self.fields(names, items);
            }
            Body::Enum(names, variants) => {
                self.out.push_str("enum ");
                self.container_name(id, c.name);
                if variants.is_empty() {
                    self.out.push_str(" {}");
                    return;
                }
                self.out.push_str(" { ");
                for (i, v) in variants.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.name(names.get(i).copied().unwrap_or("?"));
                    match &v.body {
                        None => self.out.push('?'),
                        Some(VariantBody::Rejected) => self.out.push('!'),
                        Some(VariantBody::Unit) => {}
                        Some(VariantBody::Newtype(inner)) => self.newtype(inner),
                        Some(VariantBody::Tuple(items)) => self.list("(", items, ")"),
                        Some(VariantBody::Struct(fields, items)) => self.fields(fields, items),
                    }
                }
                self.out.push_str(" }");
            }
        }
    }
}

#[cfg(test)]
// The types of the tests exist to be traced; nothing reads their fields.
#[allow(dead_code)]
mod tests {
    use std::collections::HashMap;
    use std::num::NonZeroU32;

    use serde::de::{Deserializer, Visitor};
    use serde::Deserialize;

    use super::*;

    fn text<T: DeserializeOwned + 'static>() -> String {
        shape_of::<T>().canonical().to_string()
    }

    fn fp<T: DeserializeOwned + 'static>() -> u64 {
        shape_of::<T>().fingerprint()
    }

    /// Asserts a whole, traced shape with this canonical form.
    #[track_caller]
    fn assert_shape<T: DeserializeOwned + 'static>(expected: &str) {
        let shape = shape_of::<T>();
        assert_eq!(shape.canonical(), expected);
        assert!(shape.is_complete(), "{shape} is partial");
    }

    #[test]
    fn a_lazy_shape_traces_once_on_first_use() {
        let lazy = LazyShape::of::<v1::Job>();
        assert!(lazy.shape.get().is_none());
        assert_eq!(format!("{lazy:?}"), "LazyShape(not traced yet)");
        let first: *const Shape = lazy.get();
        assert_eq!(lazy.get(), &shape_of::<v1::Job>());
        assert!(std::ptr::eq(first, lazy.get()));
    }

    #[test]
    fn the_module_doc_example_is_what_it_says() {
        assert_shape::<doc::Job>(
            "struct Job { id: u64, tags: seq<str>, next: option<^Job>, kind: enum Kind { \
             Quick, Slow(u32), Tree { depth: u8, at: (i64, f64) } } }",
        );
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b"", b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"", b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"", b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a64(b"foo", b"bar"), fnv1a64(b"", b"foobar"));
    }

    #[test]
    fn the_fingerprint_is_pinned() {
        // Another build, another compiler: the same number. If this test
        // fails, the canonical form or the hash changed, and pools and
        // workers built before and after the change refuse each other:
        // change FINGERPRINT_SALT along with it, on purpose.
        let shape = shape_of::<(u32, Option<String>)>();
        assert_eq!(shape.canonical(), "(u32, option<str>)");
        assert_eq!(
            shape.fingerprint(),
            fnv1a64(b"twinpool shape 1\n", b"(u32, option<str>)")
        );
        assert_eq!(shape.fingerprint(), 0xdb78_ae06_cc7f_e9a6);
        assert_eq!(shape.to_string(), shape.canonical());
    }

    #[test]
    fn the_same_type_gives_the_same_shape() {
        assert_eq!(shape_of::<v1::Job>(), shape_of::<v1::Job>());
        assert_eq!(fp::<v1::Job>(), fp::<v1::Job>());
    }

    #[test]
    fn primitives_by_kind() {
        assert_shape::<bool>("bool");
        assert_shape::<(i8, i16, i32, i64, i128)>("(i8, i16, i32, i64, i128)");
        assert_shape::<(u8, u16, u32, u64, u128)>("(u8, u16, u32, u64, u128)");
        assert_shape::<(f32, f64, char)>("(f32, f64, char)");
        assert_shape::<(Box<str>, std::path::PathBuf)>("[str; 2]");
        assert_shape::<()>("unit");
        assert_shape::<std::marker::PhantomData<u8>>("struct PhantomData");
        // usize is u64 to serde on 64-bit targets.
        assert_eq!(text::<usize>(), format!("u{}", usize::BITS));
    }

    #[test]
    fn integer_width_changes_the_fingerprint() {
        assert_ne!(fp::<u32>(), fp::<u64>());
        assert_ne!(fp::<u32>(), fp::<i32>());
        assert_ne!(fp::<v1::Job>(), fp::<width::Job>());
    }

    #[test]
    fn vec_u8_and_string_are_raw_and_stable() {
        assert_shape::<Vec<u8>>("raw(seq<u8>)");
        assert_shape::<String>("raw(str)");
        // Others types of the same serde form are not passed raw by the
        // codec, so they must not look interchangeable.
        assert_shape::<Box<[u8]>>("seq<u8>");
        assert_shape::<Box<str>>("str");
        assert_ne!(fp::<Vec<u8>>(), fp::<Box<[u8]>>());
        assert_ne!(fp::<String>(), fp::<Box<str>>());
        // Inside another type they go through serde like any other.
        assert_shape::<(Vec<u8>, String)>("(seq<u8>, str)");
    }

    #[test]
    fn containers_of_std() {
        assert_shape::<HashMap<String, Vec<(u8, Option<i64>)>>>("map<str, seq<(u8, option<i64>)>>");
        assert_shape::<NonZeroU32>("u32");
        assert_shape::<std::time::Duration>("struct Duration { secs: u64, nanos: u32 }");
        assert_shape::<std::net::IpAddr>("enum IpAddr { V4([u8; 4]), V6([u8; 16]) }");
        assert_shape::<Result<u8, String>>("enum Result { Ok(u8), Err(str) }");
        assert_shape::<[u16; 0]>("()");
        assert_shape::<(bool,)>("(bool,)");
        assert_shape::<std::collections::BTreeSet<char>>("seq<char>");
    }

    #[test]
    fn unit_newtype_tuple_and_plain_structs() {
        assert_shape::<Unit>("struct Unit");
        assert_shape::<Meters>("struct Meters(f64)");
        assert_shape::<Pair>("struct Pair(u8, str)");
        assert_shape::<One>("struct One { x: i32 }");
        assert_shape::<Empty>("struct Empty {}");
    }

    #[test]
    fn a_field_added_removed_renamed_reordered_or_retyped_changes_it() {
        let base = fp::<v1::Job>();
        assert_shape::<v1::Job>("struct Job { id: u32, name: str, tags: seq<str> }");
        assert_ne!(base, fp::<added::Job>());
        assert_ne!(base, fp::<removed::Job>());
        assert_ne!(base, fp::<renamed::Job>());
        assert_ne!(base, fp::<reordered::Job>());
        assert_ne!(base, fp::<retyped::Job>());
        assert_ne!(fp::<added::Job>(), fp::<removed::Job>());
    }

    #[test]
    fn an_enum_change_changes_it() {
        let base = fp::<e1::Op>();
        assert_shape::<e1::Op>("enum Op { Stop, Move(i32, i32), Say { text: str } }");
        assert_ne!(base, fp::<e_added::Op>());
        assert_ne!(base, fp::<e_removed::Op>());
        assert_ne!(base, fp::<e_renamed::Op>());
        assert_ne!(base, fp::<e_fields::Op>());
        assert_ne!(base, fp::<e_kind::Op>());
    }

    #[test]
    fn newtype_and_one_tuple_stay_apart() {
        assert_ne!(fp::<Meters>(), fp::<MetersTuple>());
        assert_eq!(text::<MetersTuple>(), "struct Meters(f64,)");
    }

    #[test]
    fn options_are_traced_through_some() {
        assert_shape::<Option<Option<(u8, char)>>>("option<option<(u8, char)>>");
    }

    #[test]
    fn a_recursive_struct_is_cut() {
        assert_shape::<Node>(
            "struct Node { value: u32, children: seq<^Node>, parent: option<^Node> }",
        );
    }

    #[test]
    fn a_recursive_enum_is_cut_with_its_base_case_first_or_last() {
        assert_shape::<List>("enum List { Nil, Cons(u32, ^List) }");
        assert_shape::<RevList>("enum RevList { Cons(u32, ^RevList), Nil }");
        assert_shape::<Expr>(
            "enum Expr { Add(^Expr, ^Expr), Neg(^Expr), Lit(i64), \
             Call { name: str, args: seq<^Expr> } }",
        );
    }

    #[test]
    fn mutual_recursion_through_struct_and_enum() {
        assert_shape::<Dir>(
            "struct Dir { name: str, entries: seq<enum DirEntry { File(str, u64), Sub(^Dir) }> }",
        );
    }

    #[test]
    fn a_type_without_finite_values_ends() {
        // Every variant leads back into the enum: no value exists, but the
        // structure is still whole.
        assert_shape::<Endless>("enum Endless { A(^Endless), B(^Endless) }");
        let shape = shape_of::<Bottomless>();
        assert!(shape
            .canonical()
            .starts_with("struct Bottomless(^Bottomless)"));
    }

    #[test]
    fn nested_enums_have_every_variant_explored() {
        assert_shape::<Outer>(
            "struct Outer { \
             first: enum Figure { Dot, Circle(f32), Rect { w: u16, h: u16 }, \
             Group(seq<enum Color { Red, Green, Rgb(u8, u8, u8), Named(str) }>) }, \
             second: ^Figure, \
             mode: enum Mode { Fast, Careful(^Color), Both(^Figure, ^Color) } }",
        );
    }

    #[test]
    fn two_containers_of_one_name_stay_apart() {
        assert_shape::<Segment>(
            "struct Segment { a: struct Point#0 { x: u8 }, b: struct Point#1 { x: f64 }, \
             c: ^Point#0 }",
        );
        // Generic instances are different containers too.
        assert_shape::<(Wrap<u8>, Wrap<String>)>("(struct Wrap#0(u8), struct Wrap#1(str))");
    }

    #[test]
    fn made_up_values_that_are_refused_are_replaced() {
        // Refuses "0" but takes "": the next attempt gets past it, and the
        // fields after it are traced.
        assert_shape::<Picky>("struct Picky { a: str, b: seq<u8>, c: enum Mode2 { X, Y } }");
    }

    #[cfg(unix)]
    #[test]
    fn a_refused_variant_is_marked() {
        assert_shape::<std::ffi::OsString>("enum OsString { Unix(seq<u8>), Windows! }");
    }

    #[test]
    fn deserialize_any_is_opaque_and_falls_back_to_the_type_name() {
        let shape = shape_of::<AnyThing>();
        assert!(!shape.is_complete());
        assert!(
            shape.canonical().starts_with("opaque(") && shape.canonical().contains("AnyVisitor"),
            "{shape}"
        );
        assert!(shape
            .canonical()
            .ends_with(" as twinpool::schema::tests::AnyThing"));

        // Inside a struct: the fields before it are still traced.
        let shape = shape_of::<HasAny>();
        assert!(!shape.is_complete());
        assert!(
            shape
                .canonical()
                .starts_with("struct HasAny { n: u8, any: opaque("),
            "{shape}"
        );
        assert!(shape.canonical().contains("later: ?"), "{shape}");
        assert!(shape
            .canonical()
            .ends_with(" as twinpool::schema::tests::HasAny"));
    }

    #[test]
    fn untagged_and_internally_tagged_enums_are_opaque() {
        let shape = shape_of::<Untagged>();
        assert!(!shape.is_complete());
        assert!(shape.canonical().starts_with("opaque("), "{shape}");
        let shape = shape_of::<Internal>();
        assert!(!shape.is_complete());
        assert!(shape.canonical().starts_with("opaque("), "{shape}");
        // Another enum of the other kind in another variant is still explored.
        let shape = shape_of::<SomeOpaque>();
        assert!(
            shape
                .canonical()
                .starts_with("enum SomeOpaque { Fine(u8), Untagged(opaque("),
            "{shape}"
        );
        assert!(shape.canonical().contains("), Also(bool) }"), "{shape}");
    }

    #[test]
    fn a_type_that_refuses_everything_does_not_loop() {
        // What it asks for is all there is to know; that it then refuses
        // the value changes nothing.
        assert_shape::<Refuser>("u32");
        // Refusing every value in the middle of a struct: what comes after
        // it cannot be reached.
        let shape = shape_of::<HasRefuser>();
        assert!(!shape.is_complete());
        assert_eq!(
            shape.canonical(),
            "struct HasRefuser { a: u8, r: u32, b: ? } as twinpool::schema::tests::HasRefuser"
        );
    }

    #[test]
    fn a_panicking_deserialize_is_opaque() {
        let shape = shape_of::<Panicky>();
        assert!(!shape.is_complete());
        assert_eq!(
            shape.canonical(),
            "opaque(panicked) as twinpool::schema::tests::Panicky"
        );
    }

    #[test]
    fn anonymous_endless_recursion_ends() {
        // No named container to cut at: the depth bound ends it.
        let shape = shape_of::<Nest>();
        assert!(!shape.is_complete());
        assert!(shape.canonical().starts_with("seq<seq<seq<"), "{shape}");
    }

    #[test]
    fn a_value_too_big_to_build_ends_within_the_budget() {
        // 2^18 leaves in every value: past the step budget.
        let start = std::time::Instant::now();
        let shape = shape_of::<Wide18>();
        assert!(!shape.is_complete());
        assert!(shape
            .canonical()
            .starts_with("struct Wide18 { a: struct Wide17"));
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        // 2^12 leaves: traced whole.
        assert!(shape_of::<Wide12>().is_complete());
    }

    #[test]
    fn big_arrays_are_traced_huge_tuples_refused() {
        assert_shape::<[u8; 32]>("[u8; 32]");
        let shape = shape_of::<Huge>();
        assert!(!shape.is_complete());
        assert_eq!(
            shape.canonical(),
            "struct Huge { a: u8, b: opaque(a tuple struct too long to trace), c: ? } \
             as twinpool::schema::tests::Huge"
        );
    }

    #[test]
    fn odd_names_are_quoted() {
        assert_shape::<Odd>(r#"struct "odd name" { "a-b": u8, type: u8 }"#);
    }

    #[test]
    fn tracing_is_fast() {
        // ~10 fields, three nested enums, a recursive one: the size of an
        // ordinary task argument.
        let runs = 200;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            std::hint::black_box(shape_of::<Order>());
        }
        let each = start.elapsed() / runs;
        let shape = shape_of::<Order>();
        assert!(shape.is_complete(), "{shape}");
        println!("shape_of::<Order>() takes {each:?}: {shape}");
        assert!(each < std::time::Duration::from_millis(20), "{each:?}");
    }

    // ---- the types of the tests ----

    mod doc {
        #[derive(serde::Deserialize)]
        pub struct Job {
            id: u64,
            tags: Vec<String>,
            next: Option<Box<Job>>,
            kind: Kind,
        }
        #[derive(serde::Deserialize)]
        enum Kind {
            Quick,
            Slow(u32),
            Tree { depth: u8, at: (i64, f64) },
        }
    }

    mod v1 {
        #[derive(serde::Deserialize)]
        pub struct Job {
            pub id: u32,
            pub name: String,
            pub tags: Vec<String>,
        }
    }
    mod width {
        #[derive(serde::Deserialize)]
        pub struct Job {
            pub id: u64,
            pub name: String,
            pub tags: Vec<String>,
        }
    }
    mod added {
        #[derive(serde::Deserialize)]
        pub struct Job {
            pub id: u32,
            pub name: String,
            pub tags: Vec<String>,
            pub extra: bool,
        }
    }
    mod removed {
        #[derive(serde::Deserialize)]
        pub struct Job {
            pub id: u32,
            pub name: String,
        }
    }
    mod renamed {
        #[derive(serde::Deserialize)]
        pub struct Job {
            pub id: u32,
            pub title: String,
            pub tags: Vec<String>,
        }
    }
    mod reordered {
        #[derive(serde::Deserialize)]
        pub struct Job {
            pub name: String,
            pub id: u32,
            pub tags: Vec<String>,
        }
    }
    mod retyped {
        #[derive(serde::Deserialize)]
        pub struct Job {
            pub id: u32,
            pub name: String,
            pub tags: Vec<char>,
        }
    }

    mod e1 {
        #[derive(serde::Deserialize)]
        pub enum Op {
            Stop,
            Move(i32, i32),
            Say { text: String },
        }
    }
    mod e_added {
        #[derive(serde::Deserialize)]
        pub enum Op {
            Stop,
            Move(i32, i32),
            Say { text: String },
            Wait,
        }
    }
    mod e_removed {
        #[derive(serde::Deserialize)]
        pub enum Op {
            Stop,
            Move(i32, i32),
        }
    }
    mod e_renamed {
        #[derive(serde::Deserialize)]
        pub enum Op {
            Halt,
            Move(i32, i32),
            Say { text: String },
        }
    }
    mod e_fields {
        #[derive(serde::Deserialize)]
        pub enum Op {
            Stop,
            Move(i32, i32, i32),
            Say { text: String },
        }
    }
    mod e_kind {
        #[derive(serde::Deserialize)]
        pub enum Op {
            Stop,
            Move(i32, i32),
            Say(String),
        }
    }

    #[derive(Deserialize)]
    struct Unit;

    #[derive(Deserialize)]
    struct Meters(f64);

    /// A one-element tuple struct, as a hand-written impl might read it.
    struct MetersTuple;

    impl<'de> Deserialize<'de> for MetersTuple {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = MetersTuple;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a tuple struct")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MetersTuple, A::Error> {
                    seq.next_element::<f64>()?;
                    Ok(MetersTuple)
                }
            }
            d.deserialize_tuple_struct("Meters", 1, V)
        }
    }

    #[derive(Deserialize)]
    struct Pair(u8, String);

    #[derive(Deserialize)]
    struct One {
        x: i32,
    }

    #[derive(Deserialize)]
    struct Empty {}

    #[derive(Deserialize)]
    struct Node {
        value: u32,
        children: Vec<Node>,
        parent: Option<Box<Node>>,
    }

    #[derive(Deserialize)]
    enum List {
        Nil,
        Cons(u32, Box<List>),
    }

    #[derive(Deserialize)]
    enum RevList {
        Cons(u32, Box<RevList>),
        Nil,
    }

    #[derive(Deserialize)]
    enum Expr {
        Add(Box<Expr>, Box<Expr>),
        Neg(Box<Expr>),
        Lit(i64),
        Call { name: String, args: Vec<Expr> },
    }

    #[derive(Deserialize)]
    struct Dir {
        name: String,
        entries: Vec<DirEntry>,
    }

    #[derive(Deserialize)]
    enum DirEntry {
        File(String, u64),
        Sub(Box<Dir>),
    }

    #[derive(Deserialize)]
    enum Endless {
        A(Box<Endless>),
        B(Box<Endless>),
    }

    #[derive(Deserialize)]
    struct Bottomless(Box<Bottomless>);

    #[derive(Deserialize)]
    struct Outer {
        first: Figure,
        second: Figure,
        mode: Mode,
    }

    #[derive(Deserialize)]
    enum Figure {
        Dot,
        Circle(f32),
        Rect { w: u16, h: u16 },
        Group(Vec<Color>),
    }

    #[derive(Deserialize)]
    enum Color {
        Red,
        Green,
        Rgb(u8, u8, u8),
        Named(String),
    }

    #[derive(Deserialize)]
    enum Mode {
        Fast,
        Careful(Color),
        Both(Figure, Color),
    }

    mod p0 {
        #[derive(serde::Deserialize)]
        pub struct Point {
            x: u8,
        }
    }
    mod p1 {
        #[derive(serde::Deserialize)]
        pub struct Point {
            x: f64,
        }
    }

    #[derive(Deserialize)]
    struct Segment {
        a: p0::Point,
        b: p1::Point,
        c: p0::Point,
    }

    #[derive(Deserialize)]
    struct Wrap<T>(T);

    /// A string that must not be "0".
    struct NotZero;

    impl<'de> Deserialize<'de> for NotZero {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            if s == "0" {
                return Err(de::Error::custom("zero"));
            }
            Ok(NotZero)
        }
    }

    #[derive(Deserialize)]
    struct Picky {
        a: NotZero,
        b: Vec<u8>,
        c: Mode2,
    }

    #[derive(Deserialize)]
    enum Mode2 {
        X,
        Y,
    }

    /// Reads anything, as `serde_json::Value` does.
    struct AnyThing;

    impl<'de> Deserialize<'de> for AnyThing {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct AnyVisitor;
            impl<'de> Visitor<'de> for AnyVisitor {
                type Value = AnyThing;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("anything")
                }
                fn visit_u64<E>(self, _: u64) -> Result<AnyThing, E> {
                    Ok(AnyThing)
                }
            }
            d.deserialize_any(AnyVisitor)
        }
    }

    #[derive(Deserialize)]
    struct HasAny {
        n: u8,
        any: AnyThing,
        later: u16,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Untagged {
        A(u8),
        B(String),
    }

    #[derive(Deserialize)]
    #[serde(tag = "type")]
    enum Internal {
        A { x: u8 },
        B { y: String },
    }

    #[derive(Deserialize)]
    enum SomeOpaque {
        Fine(u8),
        Untagged(Untagged),
        Also(bool),
    }

    /// Refuses every value.
    struct Refuser;

    impl<'de> Deserialize<'de> for Refuser {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            u32::deserialize(d)?;
            Err(de::Error::custom("never"))
        }
    }

    #[derive(Deserialize)]
    struct HasRefuser {
        a: u8,
        r: Refuser,
        b: u8,
    }

    struct Panicky;

    impl<'de> Deserialize<'de> for Panicky {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let n = u32::deserialize(d)?;
            assert_eq!(n, 12345, "deliberate panic in a test Deserialize");
            Ok(Panicky)
        }
    }

    /// A sequence of itself, with no named container to cut at.
    struct Nest;

    impl<'de> Deserialize<'de> for Nest {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Vec::<Nest>::deserialize(d).map(|_| Nest)
        }
    }

    macro_rules! wide {
        ($name:ident) => {
            #[derive(Deserialize)]
                    struct $name(u8);
        };
        ($name:ident, $next:ident $(, $rest:ident)*) => {
            #[derive(Deserialize)]
                    struct $name {
                a: Box<$next>,
                b: Box<$next>,
            }
            wide!($next $(, $rest)*);
        };
    }
    wide!(
        Wide18, Wide17, Wide16, Wide15, Wide14, Wide13, Wide12, Wide11, Wide10, Wide9, Wide8,
        Wide7, Wide6, Wide5, Wide4, Wide3, Wide2, Wide1, Wide0
    );

    /// A tuple struct of 2^20 fields, as a hand-written impl could claim.
    struct Many;

    impl<'de> Deserialize<'de> for Many {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Many;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("many")
                }
            }
            d.deserialize_tuple_struct("Many", 1 << 20, V)
        }
    }

    #[derive(Deserialize)]
    struct Huge {
        a: u8,
        b: Many,
        c: u8,
    }

    #[derive(Deserialize)]
    #[serde(rename = "odd name")]
    struct Odd {
        #[serde(rename = "a-b")]
        a: u8,
        r#type: u8,
    }

    #[derive(Deserialize)]
    struct Order {
        id: u64,
        customer: String,
        lines: Vec<Line>,
        total: f64,
        currency: Currency,
        status: Status,
        note: Option<String>,
        tags: HashMap<String, u32>,
        placed: std::time::Duration,
        address: (String, u16),
    }

    #[derive(Deserialize)]
    struct Line {
        sku: String,
        qty: NonZeroU32,
        price: i64,
        options: Vec<LineOption>,
    }

    #[derive(Deserialize)]
    enum LineOption {
        GiftWrap,
        Engraving(String),
        Bundle(Vec<Line>),
    }

    #[derive(Deserialize)]
    enum Currency {
        Eur,
        Usd,
        Other(String),
    }

    #[derive(Deserialize)]
    enum Status {
        New,
        Paid { at: u64, via: Currency },
        Shipped { carrier: String, parcels: Vec<u32> },
        Cancelled(Option<String>),
    }
}
