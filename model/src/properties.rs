//! The properties the model checks ([`PROPERTY_NAMES`]), and the judgements they rest on: who
//! serves as primary, whether a port that reports itself active tells the truth.

use crate::model::ClusterModel;
use crate::options::LUN;
use crate::state::ClusterState;
use duet_core::alua::HaMode;
use stateright::semantics::register::RegisterOp;
use stateright::Property;

/// The properties the model checks, by name.
pub const PROPERTY_NAMES: [&str; 6] = [
    "single-primary",
    "linearizable",
    "acked-writes-durable",
    "alua-truthful",
    "clean-stop-unfenced",
    "primary-eventually",
];

/// The properties, in the order of [`PROPERTY_NAMES`].
pub(crate) fn properties() -> Vec<Property<ClusterModel>> {
    vec![
        Property::always("single-primary", |_, s: &ClusterState| {
            (0..2)
                .filter(|&n| ClusterModel::serving_primary(s, n))
                .count()
                <= 1
        }),
        Property::always("linearizable", |_, s: &ClusterState| {
            s.history.serialized_history().is_some()
        }),
        Property::always(
            "acked-writes-durable",
            |m: &ClusterModel, s: &ClusterState| {
                let writing = s.clients.iter().enumerate().any(|(i, c)| {
                    c.invoked
                        && !m.client_done(c)
                        && matches!(m.op_of(i, c.op), RegisterOp::Write(_))
                });
                writing || s.backend == s.acked
            },
        ),
        Property::always("alua-truthful", |m: &ClusterModel, s: &ClusterState| {
            (0..2).all(|n| match ClusterModel::local_state(s, n) {
                Some(st) if st.is_active() => m.truthful(s, n),
                _ => true,
            })
        }),
        Property::always("clean-stop-unfenced", |_, s: &ClusterState| {
            !s.fenced_after_leaving
        }),
        Property::eventually(
            "primary-eventually",
            |m: &ClusterModel, s: &ClusterState| {
                m.now_tick(s) >= m.opts.max_ticks
                    && (!s.primary_lost
                        || s.ctl.iter().all(|c| c.node.is_none())
                        || (0..2).any(|n| ClusterModel::serving_primary(s, n)))
            },
        ),
    ]
}

impl ClusterModel {
    /// A port of controller `n` that reports itself active would serve a data command now, and
    /// correctly (not as one of two primaries).
    fn truthful(&self, s: &ClusterState, n: usize) -> bool {
        let Some(node) = &s.ctl[n].node else {
            return true;
        };
        if s.ctl[n].disk_fenced {
            // Fenced at the disk and not yet told: every data command it starts is refused with
            // a retryable sense (Transitioning), never served wrongly, and the first refusal
            // makes it step down.
            return true;
        }
        if node.is_primary(LUN) {
            node.serving(LUN) && !Self::serving_primary(s, 1 - n)
        } else {
            match self.opts.mode {
                HaMode::ActiveStandby => false,
                HaMode::ActiveActiveShared => node.serving(LUN) && Self::primary_reachable(s, n),
                HaMode::ActiveActiveForward => Self::primary_reachable(s, n),
            }
        }
    }
}
