//! `baton`: the command line. Thin: it parses arguments, loads the configuration, opens the
//! store and calls the engine; everything else lives in the library crates.

/// `outln!` for what a command prints on stdout, except that a closed stdout (`baton events |
/// head`) ends the process quietly instead of panicking ([`output::out`]).
macro_rules! outln {
    () => {
        $crate::output::out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `errln!` that does not panic when stderr is closed ([`output::say`]).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::say(&format!($($arg)*))
    };
}

/// `print!` to stdout, as [`outln!`] does.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::out(format_args!($($arg)*))
    };
}

mod attach;
mod client;
mod commands;
mod init;
mod output;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Baton runs a team of agents against a plan: workstreams with dependencies, tasks routed by
/// capability and priority, durable state that survives a crash.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, max_term_width = 100)]
pub struct Cli {
    /// The configuration file.
    #[arg(short, long, global = true, env = "BATON_CONFIG", default_value = "baton.toml")]
    pub config: PathBuf,

    /// Overlay `baton.PROFILE.toml` (beside the configuration file) on the configuration.
    #[arg(long, global = true, env = "BATON_PROFILE")]
    pub profile: Option<String>,

    /// The store to read, overriding the configuration's `store.url`.
    #[arg(long, global = true, env = "BATON_STORE")]
    pub store: Option<String>,

    /// Log level for Baton's own diagnostics: error, warn, info, debug or trace (`RUST_LOG`,
    /// when set, wins). By default Baton's notices (info) and others' warnings.
    #[arg(long, global = true, env = "BATON_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// How Baton's own diagnostics are written: `text`, or `json` (one object per line; `baton
    /// run`'s event lines too, each with the event).
    #[arg(long, global = true, env = "BATON_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// The API of a running `baton serve` to talk to (read commands, and every command that
    /// changes the run); by default the configuration's `server.url` when a server of this plan
    /// answers there, else the socket beside the store of a running `baton run` or `baton
    /// serve`, else (read commands only) the store directly.
    #[arg(long, global = true, env = "BATON_URL")]
    pub url: Option<String>,

    /// The bearer token for a server with [auth] (not needed on the socket beside the store).
    #[arg(long, global = true, env = "BATON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the example roadmap (baton.toml and its agents) into a directory.
    Init {
        /// Where to write it.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Overwrite files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Validate the configuration and its environment, and print the plan.
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the plan to completion, resuming the unfinished run if there is one.
    Run {
        /// Start a new run even if the last one did not finish.
        #[arg(long)]
        fresh: bool,
        /// Print plain lines even on a terminal.
        #[arg(long)]
        plain: bool,
        /// How long running tasks may finish after Ctrl-C or SIGTERM.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        grace: std::time::Duration,
    },
    /// Run the plan behind the HTTP API: the run stays open for tasks that come through the
    /// API, remote agents claim work over HTTP, and baton.toml is reloaded when it changes.
    Serve {
        /// Where to listen, overriding `server.listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Start a new run even if the last one did not finish.
        #[arg(long)]
        fresh: bool,
        /// How long running tasks may finish after Ctrl-C or SIGTERM.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        grace: std::time::Duration,
    },
    /// Serve a remote agent (runtime = "remote") of a `baton serve` elsewhere: claim its tasks
    /// over HTTP (--url, --token) and run COMMAND for each, as a per-task agent runs (the task as
    /// JSON on stdin, BATON_* variables, {task.…} placeholders, limits); its stdout is the
    /// result, its stderr the task's progress. Ctrl-C or SIGTERM stops claiming and lets running
    /// tasks finish within --grace.
    AgentHost {
        /// The remote agent whose tasks this host runs.
        #[arg(long)]
        agent: String,
        /// At most this many tasks at once.
        #[arg(long, default_value_t = 1)]
        concurrency: u32,
        /// Read the bearer token from this environment variable instead of --token
        /// (BATON_TOKEN): an agent token, `baton token create --role agent --agent NAME`.
        #[arg(long, value_name = "VAR")]
        token_env: Option<String>,
        /// How long a task may take when it sets no timeout of its own, such as 10m.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// A variable of this environment the command inherits, beyond PATH, HOME, LANG and the
        /// like (repeat, or separate with commas).
        #[arg(long, value_name = "VAR", value_delimiter = ',')]
        env_passthrough: Vec<String>,
        /// Where the agent's log is written (default: .baton/logs in the current directory).
        #[arg(long)]
        log_dir: Option<PathBuf>,
        /// How long running tasks may finish after Ctrl-C or SIGTERM; then they are stopped and
        /// reported failed (the server retries them).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// The program and its arguments, run once per task in the current directory.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Issue API tokens (signed with the secret `[auth] secret_env` names).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The server's audit log: every mutating API request, who made it and how it ended.
    Audit {
        /// At most this many entries, newest first (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// Only requests by this token subject.
        #[arg(long)]
        actor: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the current (or last) run: phase, progress, outcome, workstreams.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// List the run's tasks.
    Tasks {
        /// Only tasks in this state: pending, ready, running, succeeded, dead, cancelled or suspended.
        #[arg(long)]
        state: Option<String>,
        /// Only tasks of this workstream.
        #[arg(long)]
        workstream: Option<String>,
        /// Only tasks assigned to this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// Add a task, or show, cancel or retry one.
    Task {
        #[command(subcommand)]
        action: TaskAction,
    },
    /// Start, stop or restart an agent of the running `baton run` or `baton serve`.
    Agent {
        #[command(subcommand)]
        action: AgentAction,
    },
    /// List the schedules: cron, time zone, state, next fire times, last firing.
    Schedules {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// List the tools of the run's MCP servers (`[mcp_servers]`), with the servers' state.
    Tools {
        /// Only the tools whose name or description has every one of these words.
        #[arg(long, short = 'q')]
        query: Option<String>,
        /// Only the tools this agent's `tools` globs allow.
        #[arg(long)]
        agent: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// Call a tool of the running `baton run` or `baton serve`'s MCP servers.
    Tool {
        #[command(subcommand)]
        action: ToolAction,
    },
    /// Pause or resume a schedule of the running `baton run` or `baton serve`.
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// List the run's agents.
    Agents {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// Turn an objective into tasks of a workstream, through the running `baton run` or
    /// `baton serve`: the coordinator's model proposes them (`[coordinator] mode = "llm"`), or
    /// the rules make one task; prints the tasks and why the rules decided.
    Plan {
        /// What to achieve: "Release notes for 1.2, reviewed".
        objective: String,
        /// The workstream the tasks belong to.
        #[arg(long)]
        workstream: String,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send a chat message to the agents it @mentions, through the running `baton run` or
    /// `baton serve`: a message for a worker, a task for a per-task or terminal agent.
    Send {
        /// The message, with @mentions: "@reviewer @tester please look at the storage change".
        text: String,
        /// JSON data to send along.
        #[arg(long)]
        data: Option<String>,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// List the run's messages (all, or to and from one agent); `messages redeliver` delivers
    /// dead letters again.
    #[command(args_conflicts_with_subcommands = true)]
    Messages {
        #[command(subcommand)]
        action: Option<MessagesAction>,
        /// Only messages to or from this agent.
        #[arg(long)]
        agent: Option<String>,
        /// At most this many, the latest (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// Token budgets of the current period: use, limits, thresholds reached, the next reset;
    /// `budget set` changes a limit in the running `baton run`.
    Budget {
        #[command(subcommand)]
        action: Option<BudgetAction>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// Show the resources running tasks hold and the tasks waiting for them.
    Conflicts {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// Print the run's events; with --follow, keep printing until the run ends.
    Events {
        /// Keep printing what comes next, until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: i64,
        /// Only events about this task.
        #[arg(long)]
        task: Option<i64>,
        /// Only events of these types, comma-separated (`TaskFailed,TaskDeadLettered`).
        #[arg(long = "type", value_name = "TYPES")]
        kinds: Option<String>,
        /// Only events about this agent.
        #[arg(long)]
        agent: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// Connect this terminal to a terminal agent (mode = "pty") of the running `baton run`:
    /// see its screen and type to it. Ctrl-] detaches; the agent keeps running.
    Attach {
        /// The terminal agent's name.
        agent: String,
    },
    /// Serve Baton's MCP tools over stdio, for a coding agent (`claude mcp add baton -- baton
    /// mcp`): each JSON-RPC message read from stdin goes to the `/mcp` endpoint of the process
    /// executing the run (--url, else the configured server, else the socket beside the store),
    /// with the token of --token (BATON_TOKEN), and its answer is written to stdout.
    Mcp,
    /// Print an agent's log (its stderr and Baton's notes about each task).
    Logs {
        /// The agent's name.
        agent: String,
        /// Keep printing what comes next, until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Look after the store itself: its schema, what it holds, moving it to PostgreSQL.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Measure the engine on the embedded store (DESIGN.md §8 figures).
    Bench {
        /// Tasks in the lifecycle figure (default 20,000), or in the soak (default 100,000).
        #[arg(long)]
        tasks: Option<u64>,
        /// Lifecycle (or messages) runs; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeats: u32,
        /// Seconds of load for the dispatch-latency figure (with --http: of the per-task latency
        /// run through the worker processes; 0 for none).
        #[arg(long, default_value_t = 4)]
        latency_seconds: u64,
        /// SQLite synchronous mode: full (default) or normal.
        #[arg(long, default_value = "full")]
        synchronous: String,
        /// Where to put the benchmark's stores (a temporary directory by default).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Run the soak instead: real worker processes, killed at random.
        #[arg(long)]
        soak: bool,
        /// Measure durable messages between worker agents instead.
        #[arg(long)]
        messages: bool,
        /// Messages: send from the benchmark straight to the store (as the post office does once
        /// it has resolved the recipients) instead of from the workers with `message/send`.
        #[arg(long)]
        from_store: bool,
        /// Messages: unanswered `message/send` requests per worker, at most.
        #[arg(long, default_value_t = 64)]
        in_flight: u64,
        /// Agents: workers for the soak (default 200) and the messages (default 8); LLM agents at
        /// once for --llm (default 100).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        agents: Option<u32>,
        /// Soak: a worker is killed this often.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        kill_every: std::time::Duration,
        /// Measure the task lifecycle through the HTTP API instead: tasks created with `POST
        /// /tasks/batch`, claimed and completed by remote worker processes over HTTP, while
        /// `GET /status` is timed (see BENCHMARKS.md).
        #[arg(long)]
        http: bool,
        /// Measure a restart instead: `baton serve` started on a store holding a long run
        /// (--tasks finished tasks, default 1,000,000, and 1,000 unfinished ones), timed until
        /// it serves and until the unfinished tasks are claimed, with its memory afterwards.
        #[arg(long)]
        restart: bool,
        /// Measure LLM agents instead, against a stand-in provider in process that answers at
        /// once: the overhead of a turn with one agent (--tasks conversations, default 200) and
        /// with --agents at once (default 100), with the process's memory and CPU time.
        #[arg(long)]
        llm: bool,
        /// LLM: turns per conversation.
        #[arg(long, default_value_t = 5)]
        turns: u32,
        /// HTTP: worker processes.
        #[arg(long, default_value_t = 4)]
        workers: u32,
        /// HTTP: remote agents the workers serve (worker i serves agent w{i mod this}).
        #[arg(long, default_value_t = 4)]
        remote_agents: u32,
        /// HTTP: tasks per claim (and so per `POST /agent/results`), at most.
        #[arg(long, default_value_t = 64)]
        claim_batch: u32,
        /// HTTP: tasks per `POST /tasks/batch`.
        #[arg(long, default_value_t = 500)]
        create_batch: usize,
        /// HTTP: queue every task before the workers start and time only the processing (from
        /// the first task handed to a worker to the last completion recorded).
        #[arg(long)]
        drain: bool,
        /// HTTP: results posts each worker keeps in flight (1: claim only once the last results
        /// are recorded; more: claim the next batch while they commit).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
        pipeline: u32,
    },
    /// The minimal worker `baton bench --soak` and `baton bench --messages` run (internal).
    #[command(hide = true)]
    BenchWorker,
    /// The HTTP worker `baton bench --http` runs (internal): claims and completes tasks of a
    /// remote agent until its stdin closes.
    #[command(hide = true)]
    BenchHttpWorker {
        #[arg(long)]
        url: String,
        #[arg(long)]
        agent: String,
        #[arg(long, default_value_t = 64)]
        batch: u32,
        /// Results posts kept in flight.
        #[arg(long, default_value_t = 1)]
        pipeline: u32,
        /// Note when each task was handed over, for the latency figure.
        #[arg(long)]
        record: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Print a new token.
    Create {
        /// admin, operator, viewer or agent.
        #[arg(long)]
        role: String,
        /// For `--role agent`: the agent the token acts as.
        #[arg(long)]
        agent: Option<String>,
        /// How long it is valid (default: `[auth] token_ttl`).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Who it is for, as the audit log will name them (default: the role, or agent:NAME).
        #[arg(long)]
        subject: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentAction {
    /// Start a stopped or failed agent (with a fresh restart budget).
    Start {
        /// The agent's name.
        name: String,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// Stop an agent gracefully; tasks only it can run wait for it.
    Stop {
        /// The agent's name.
        name: String,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// Stop an agent and start it again.
    Restart {
        /// The agent's name.
        name: String,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ToolAction {
    /// Call a tool with JSON arguments and print its result; exits 1 when the tool reports an
    /// error (`isError`).
    Call {
        /// The tool, `SERVER/TOOL` (`baton tools` lists them).
        name: String,
        /// The arguments, a JSON object.
        #[arg(long = "args", default_value = "{}")]
        arguments: String,
        /// Print the whole result as JSON.
        #[arg(long)]
        json: bool,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Pause a schedule: its due times pass without firing until it is resumed.
    Pause {
        /// The schedule's name.
        name: String,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// Resume a paused schedule: it fires from its next due time on.
    Resume {
        /// The schedule's name.
        name: String,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BudgetAction {
    /// Set a budget's limit until the next reset, in the running `baton run` (raising it lets
    /// the agents it blocked work again). SCOPE: global, workstream:NAME or agent:NAME.
    Set {
        /// `global`, `workstream:NAME` or `agent:NAME`.
        scope: String,
        /// The tokens the scope may use until the next reset.
        #[arg(long)]
        daily_tokens: Option<u64>,
        /// The cost, in US dollars, the scope may spend until the next reset.
        #[arg(long)]
        cost_usd: Option<f64>,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Bring the store's schema up to date (what every command that opens it does first);
    /// safe while other nodes start on the same database.
    Migrate,
    /// Say whether the store's schema is current and how many rows each table holds; exits
    /// with 1 when the schema is older or newer than this baton's.
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copy a SQLite store (its runs, tasks, events, schedules, messages, usage, audit and
    /// transcripts, ids and event numbers kept) into an empty PostgreSQL store, in one
    /// transaction.
    Copy {
        /// The store to copy: sqlite://PATH.
        #[arg(long)]
        from: String,
        /// The store to fill: postgres://USER@HOST/DATABASE, empty.
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MessagesAction {
    /// Deliver dead letters again, with a fresh count of tries, in the running `baton run`.
    Redeliver {
        /// The deliveries to redeliver (the `id` column of `baton messages`).
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        ids: Vec<i64>,
        /// Every dead letter of the run.
        #[arg(long)]
        dead: bool,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskAction {
    /// Add a task to the running run (through the API of the `baton run` or `baton serve`
    /// executing it; prints its id).
    Add(Box<TaskArgs>),
    /// Show a task with its attempts' events.
    Show {
        /// The task's id.
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task (a running attempt is killed), in the running `baton run` or `baton serve`.
    Cancel {
        /// The task's id.
        id: i64,
        /// Why; shown in the task's events.
        #[arg(long, default_value = "cancelled by an operator")]
        reason: String,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
    /// Put a dead or cancelled task back in the queue, in the running `baton run` or `baton
    /// serve`.
    Retry {
        /// The task's id.
        id: i64,
        /// A run id; the latest run of the plan by default.
        #[arg(long)]
        run: Option<String>,
    },
}

/// The fields of a `[[tasks]]` entry, for `baton task add`.
#[derive(Debug, clap::Args)]
pub struct TaskArgs {
    /// The task's title.
    pub title: String,
    /// What the task is about, for the agent.
    #[arg(long)]
    pub description: Option<String>,
    /// The workstream the task belongs to.
    #[arg(long)]
    pub workstream: Option<String>,
    /// A capability the agent needs (repeat, or separate with commas).
    #[arg(long, value_name = "CAP", value_delimiter = ',')]
    pub requires: Vec<String>,
    /// Pin the task to this agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// JSON handed to the agent.
    #[arg(long)]
    pub input: Option<String>,
    /// The task's key, its identity within the run (default: from the title).
    #[arg(long)]
    pub key: Option<String>,
    /// critical, high, medium or low (default: the workstream's).
    #[arg(long, value_parser = ["critical", "high", "medium", "low"])]
    pub priority: Option<String>,
    /// Attempts before the task is dead (default 3).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// How long an attempt may take, such as 30s or 10m.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// A task this one waits for, by key or id (repeat, or separate with commas).
    #[arg(long, value_name = "KEY_OR_ID", value_delimiter = ',')]
    pub depends_on: Vec<String>,
    /// A resource the task uses, such as file:src/** (repeat, or separate with commas): tasks
    /// whose resources overlap do not run at the same time.
    #[arg(long = "resource", value_name = "RESOURCE", value_delimiter = ',')]
    pub resources: Vec<String>,
    /// Tokens the task expects to use: it does not start while a budget that covers it has
    /// less left.
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u64).range(1..))]
    pub estimated_tokens: Option<u64>,
    /// A run id; the latest run of the plan by default.
    #[arg(long)]
    pub run: Option<String>,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    baton_core::time::parse_duration(text)
}

/// A failure with the exit code it maps to: 1 for a failed run, 2 for bad configuration or
/// usage.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure { code: 2, message: message.into() }
    }

    pub fn run(message: impl Into<String>) -> Failure {
        Failure { code: 1, message: message.into() }
    }
}

/// An operation's failure, with the exit code its kind maps to: 2 for what the caller can fix
/// (the kinds the API answers with a 4xx: invalid, forbidden, not found, conflict, full), 1 for
/// what failed on Baton's side (unavailable, internal) — as [`client`] maps the API's statuses.
impl From<baton_ops::Error> for Failure {
    fn from(error: baton_ops::Error) -> Failure {
        use baton_ops::ErrorKind;
        let code = match error.kind() {
            ErrorKind::Invalid | ErrorKind::Forbidden | ErrorKind::NotFound | ErrorKind::Conflict | ErrorKind::Full => {
                2
            }
            ErrorKind::Unavailable | ErrorKind::Internal => 1,
        };
        Failure { code, message: error.message().to_string() }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure { code: 1, message: format!("{error:#}") }
    }
}

fn main() -> ExitCode {
    // `baton __reap -- PROGRAM…` is the supervisor Baton puts between itself and each agent.
    if std::env::args_os().nth(1).is_some_and(|arg| arg == baton_runtime::process::reaper::SUBCOMMAND) {
        return ExitCode::from(baton_runtime::process::reaper::main(std::env::args_os().skip(2)));
    }
    if let Some(binary) = baton_runtime::process::reaper::own_binary() {
        baton_runtime::process::reaper::enable(binary);
    }
    let cli = Cli::parse();
    // `baton` also matches the `baton_*` crates' targets (directives match by prefix).
    let directives = match &cli.log_level {
        Some(level) => format!("{level},baton={level}"),
        None => "warn,baton=info".to_string(),
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .and_then(|value| tracing_subscriber::EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(directives));
    // Colours only for a person at a terminal: a log redirected to a file stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            errln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            if !failure.message.is_empty() {
                errln!("{}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command, and every option and argument of it, says what it is for in `--help`.
    #[test]
    fn every_option_of_every_command_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in command.get_subcommands() {
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{sub_path} (the command itself)"));
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "baton", &mut missing);
        assert!(missing.is_empty(), "options without help:\n{}", missing.join("\n"));
    }
}
