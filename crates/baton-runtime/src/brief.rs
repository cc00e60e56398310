//! What an agent is told about itself: the `role`, `runbook` and `objectives` of its
//! `[[agents]]` entry. A process agent gets them in its environment (`BATON_AGENT_ROLE`,
//! `BATON_AGENT_RUNBOOK`, `BATON_AGENT_OBJECTIVES`) and as `brief` in the JSON it is handed (a
//! per-task agent's stdin, a worker's `initialize`); an LLM agent's system prompt is made of
//! them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use baton_core::config::{AgentSpec, Objective};

/// An agent's role, runbook and objectives, with the runbook's path resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Brief {
    pub role: String,
    /// The runbook file, relative paths resolved against the configuration file's directory.
    pub runbook: Option<PathBuf>,
    pub objectives: Vec<Objective>,
}

impl Brief {
    /// The brief of `spec`; `base_dir` is the configuration file's directory.
    pub fn of(spec: &AgentSpec, base_dir: &Path) -> Brief {
        Brief {
            role: spec.role.clone(),
            runbook: spec.runbook.as_deref().map(|runbook| base_dir.join(runbook)),
            objectives: spec.objectives.clone(),
        }
    }

    /// The brief as JSON: `{"role", "runbook", "objectives"}` (`runbook` the file's path, or
    /// null).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "role": self.role,
            "runbook": self.runbook.as_ref().map(|path| path.display().to_string()),
            "objectives": self.objectives,
        })
    }

    /// Adds the brief to an agent's environment. `BATON_AGENT_RUNBOOK` is set only when the
    /// agent has a runbook; `BATON_AGENT_OBJECTIVES` is a JSON array (`[]` when there are none).
    pub fn add_to(&self, env: &mut BTreeMap<String, String>) {
        env.insert("BATON_AGENT_ROLE".into(), self.role.clone());
        if let Some(runbook) = &self.runbook {
            env.insert("BATON_AGENT_RUNBOOK".into(), runbook.display().to_string());
        }
        let objectives = serde_json::to_string(&self.objectives).unwrap_or_else(|_| "[]".into());
        env.insert("BATON_AGENT_OBJECTIVES".into(), objectives);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_runbook_is_found_beside_the_configuration() {
        let plan = baton_core::config::load(
            "baton.toml",
            r#"
            [orchestration]
            name = "p"
            [[agents]]
            name = "builder"
            role = "Build fixer"
            command = ["true"]
            runbook = "runbooks/build.md"
            [[agents.objectives]]
            description = "A workspace that builds"
            validation = "cargo build succeeds"
            "#,
            &BTreeMap::new(),
        )
        .expect("the plan is valid");
        let brief = Brief::of(&plan.agents[0], Path::new("/plans/team"));
        assert_eq!(brief.runbook, Some(PathBuf::from("/plans/team/runbooks/build.md")));
        let mut env = BTreeMap::new();
        brief.add_to(&mut env);
        assert_eq!(env["BATON_AGENT_ROLE"], "Build fixer");
        assert_eq!(env["BATON_AGENT_RUNBOOK"], "/plans/team/runbooks/build.md");
        let objectives: serde_json::Value = serde_json::from_str(&env["BATON_AGENT_OBJECTIVES"]).unwrap();
        assert_eq!(objectives[0]["description"], "A workspace that builds");
        assert_eq!(brief.json()["objectives"][0]["validation"], "cargo build succeeds");
    }
}
