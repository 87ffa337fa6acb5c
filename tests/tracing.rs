//! The `tracing` feature: a span `twinpool.task` per task, child of the
//! submitter's span, entered on the worker thread for thread tasks, and
//! spanning a process task's life in the parent with an `ended` event.
//! A small recording subscriber stands in for a real one. This program
//! is its own worker (process pools), so it has its own harness.

mod proc_common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use twinpool::{serve_if_worker, Executor, Registry};

/// What the subscriber saw of one span.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: String,
    parent: Option<u64>,
    fields: HashMap<String, String>,
    /// The names of the threads that entered it.
    entered_on: Vec<String>,
    /// The messages of events inside it.
    events: Vec<String>,
}

#[derive(Default)]
struct Recorder {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, Seen>>,
    /// The span each thread is in, innermost last.
    stacks: Mutex<HashMap<std::thread::ThreadId, Vec<u64>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl Recorder {
    fn current(&self) -> Option<u64> {
        let stacks = self.stacks.lock().unwrap();
        stacks.get(&std::thread::current().id())?.last().copied()
    }

    fn tasks(&self) -> Vec<Seen> {
        let spans = self.spans.lock().unwrap();
        spans
            .values()
            .filter(|s| s.name == "twinpool.task")
            .cloned()
            .collect()
    }

    fn id_of(&self, name: &str) -> u64 {
        let spans = self.spans.lock().unwrap();
        *spans.iter().find(|(_, s)| s.name == name).expect(name).0
    }
}

/// The subscriber: a handle on the shared record.
#[derive(Clone)]
struct Sub(Arc<Recorder>);

impl std::ops::Deref for Sub {
    type Target = Recorder;
    fn deref(&self) -> &Recorder {
        &self.0
    }
}

impl Subscriber for Sub {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut seen = Seen {
            name: attrs.metadata().name().to_string(),
            parent: attrs.parent().map(Id::into_u64).or_else(|| {
                if attrs.is_contextual() {
                    self.current()
                } else {
                    None
                }
            }),
            ..Seen::default()
        };
        attrs.record(&mut Fields(&mut seen.fields));
        self.spans.lock().unwrap().insert(id, seen);
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(seen) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let span = event.parent().map(Id::into_u64).or_else(|| self.current());
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        if let Some(id) = span {
            if let Some(seen) = self.spans.lock().unwrap().get_mut(&id) {
                let message = fields.remove("message").unwrap_or_default();
                let outcome = fields.remove("outcome").unwrap_or_default();
                seen.events
                    .push(format!("{message} {outcome}").trim().to_string());
            }
        }
    }
    fn enter(&self, span: &Id) {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("").to_string();
        if let Some(seen) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            seen.entered_on.push(name);
        }
        let mut stacks = self.stacks.lock().unwrap();
        stacks.entry(thread.id()).or_default().push(span.into_u64());
    }
    fn exit(&self, _span: &Id) {
        let mut stacks = self.stacks.lock().unwrap();
        if let Some(stack) = stacks.get_mut(&std::thread::current().id()) {
            stack.pop();
        }
    }
}

fn tasks() -> Registry {
    Registry::new()
        .register("double", |x: u64| x * 2)
        .register("refuse", |_: u64| -> u64 { panic!("refused") })
}

/// The one subscriber of this program, global: events of a task come from
/// the pool's threads, which a thread-local default would not reach.
fn recorder() -> Sub {
    static RECORDER: std::sync::OnceLock<Sub> = std::sync::OnceLock::new();
    let sub = RECORDER.get_or_init(|| {
        let sub = Sub(Arc::new(Recorder::default()));
        tracing::subscriber::set_global_default(sub.clone()).expect("the first subscriber");
        sub
    });
    // Each test starts from an empty record.
    sub.spans.lock().unwrap().clear();
    sub.clone()
}

fn thread_tasks_run_inside_their_span() {
    let recorder = recorder();
    let ex = Executor::builder()
        .threads(1)
        .thread_name_prefix("traced")
        .registry(tasks())
        .build()
        .unwrap();
    {
        let request = tracing::info_span!("request");
        let _in = request.enter();
        let f = ex
            .submit(|| {
                tracing::info!("inside the task");
            })
            .unwrap();
        f.result().unwrap();
        assert_eq!(
            ex.submit_named::<u64, u64>("double", 4).unwrap().result(),
            Ok(8)
        );
    }
    let request = recorder.id_of("request");
    let tasks = recorder.tasks();
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    for t in &tasks {
        assert_eq!(t.parent, Some(request), "{t:?}");
        assert_eq!(t.fields["backend"], "threads");
        assert!(t.fields.contains_key("task_id"), "{t:?}");
        assert_eq!(t.entered_on, ["traced_0"], "{t:?}");
    }
    let closure = tasks.iter().find(|t| t.fields["name"].is_empty()).unwrap();
    assert_eq!(closure.events, ["inside the task"]);
    assert!(tasks.iter().any(|t| t.fields["name"] == "double"));
}

fn process_tasks_span_their_life_in_the_parent() {
    let recorder = recorder();
    let ex = Executor::processes(1, tasks()).unwrap();
    {
        let batch = tracing::info_span!("batch");
        let _in = batch.enter();
        assert_eq!(
            ex.submit_named::<u64, u64>("double", 21).unwrap().result(),
            Ok(42)
        );
        assert!(ex
            .submit_named::<u64, u64>("refuse", 1)
            .unwrap()
            .result()
            .is_err());
    }
    let batch = recorder.id_of("batch");
    let tasks = recorder.tasks();
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    for t in &tasks {
        assert_eq!(t.parent, Some(batch), "{t:?}");
        assert_eq!(t.fields["backend"], "processes");
        assert!(t.fields.contains_key("task_id"), "{t:?}");
    }
    let ok = tasks.iter().find(|t| t.fields["name"] == "double").unwrap();
    assert_eq!(ok.events, ["ended ok"]);
    let refused = tasks.iter().find(|t| t.fields["name"] == "refuse").unwrap();
    assert_eq!(refused.events, ["ended error"]);
}

fn main() {
    serve_if_worker(&tasks());
    proc_common::run(&[
        (
            "thread_tasks_run_inside_their_span",
            thread_tasks_run_inside_their_span,
        ),
        (
            "process_tasks_span_their_life_in_the_parent",
            process_tasks_span_their_life_in_the_parent,
        ),
    ]);
}
