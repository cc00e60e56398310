//! The configuration loader: `baton.toml` text, optionally a profile and `BATON_*` variables,
//! into a validated plan, which then builds a scheduler as a run would.
//!
//! Input: the base file, then optionally a NUL byte and the profile's text, then optionally a
//! NUL byte and environment variables, one `NAME=VALUE` a line.

#![no_main]

use std::collections::BTreeMap;

use baton_core::Timestamp;
use baton_core::config::{self, Source};
use baton_core::sched::{Effects, Scheduler, Stored};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\0');
    let base = parts.next().unwrap_or_default();
    let profile = parts.next();
    let mut env = BTreeMap::from([
        ("HOME".to_string(), "/home/baton".to_string()),
        ("PATH".to_string(), "/usr/bin:/bin".to_string()),
        ("API_KEY".to_string(), "secret".to_string()),
    ]);
    for line in parts.next().unwrap_or_default().lines() {
        if let Some((name, value)) = line.split_once('=') {
            env.insert(name.to_string(), value.to_string());
        }
    }

    let plan = if profile.is_none() && env.len() == 3 {
        config::load("baton.toml", base, &env)
    } else {
        let base = Source { file: "baton.toml", text: base };
        let profile = profile.map(|text| Source { file: "baton.fuzz.toml", text });
        config::load_sources(base, profile, &env)
    };
    let Ok(plan) = plan else { return };
    let _ = plan.describe();
    for schedule in &plan.schedules {
        let timetable = schedule.timetable();
        let _ = timetable.upcoming(Timestamp(1_800_000_000_000), 2);
    }

    // What a new run does with the plan.
    let now = Timestamp(1_800_000_000_000);
    let names: Vec<String> = plan.agents.iter().map(|agent| agent.name.clone()).collect();
    let stored = Stored {
        run_id: "run".to_string(),
        phase: 0,
        tasks: Vec::new(),
        finished: Vec::new(),
        dependencies: Vec::new(),
        failures: Vec::new(),
        agents: Vec::new(),
        schedules: Vec::new(),
        usage: Vec::new(),
    };
    let mut fx = Effects::default();
    let mut sched = Scheduler::new(plan, "node".to_string(), stored, now, &mut fx);
    for name in &names {
        let _ = sched.agent_started(name, now, &mut fx);
    }
    sched.tick(now, &mut fx);
    sched.step(now, &mut fx);
    let _ = sched.next_wakeup();
    let _ = sched.progress();
});
