//! One actor per client: holds its shard (indices), turns `FitIns` into a slot job and answers
//! with a `FitRes` through a narrow handle, so it never sees the server's message type.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use tokio::sync::oneshot;

use crate::messages::{ClientId, FitIns, FitRes, FitStatus};
use crate::slots::{Job, SlotHandle};

/// Client actor.
pub struct Client;

/// Messages a client understands.
pub enum ClientMsg {
    /// Train for one round and reply.
    Fit(FitIns),
}

/// Start-up arguments and state (a client's state is small: an id and its shard indices).
pub struct ClientArgs {
    /// Who.
    pub id: ClientId,
    /// Indices of its examples in the shared training set.
    pub shard: Arc<[u32]>,
    /// Where training runs.
    pub slots: SlotHandle,
    /// Where results go.
    pub reply: DerivedActorRef<FitRes>,
}

impl Actor for Client {
    type Msg = ClientMsg;
    type State = ClientArgs;
    type Arguments = ClientArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ClientMsg>,
        args: ClientArgs,
    ) -> Result<ClientArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<ClientMsg>,
        msg: ClientMsg,
        st: &mut ClientArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClientMsg::Fit(ins) => {
                let round = ins.round;
                let (tx, rx) = oneshot::channel();
                let job = Job::Fit {
                    client: st.id,
                    shard: st.shard.clone(),
                    ins,
                    reply: tx,
                };
                let status = match st.slots.submit(job) {
                    Ok(()) => rx.await.unwrap_or_else(|_| FitStatus::Failed {
                        reason: "the slot dropped the job".into(),
                    }),
                    Err(e) => FitStatus::Failed {
                        reason: e.to_string(),
                    },
                };
                // The server may be gone at shutdown; nothing left to tell then.
                let _ = st.reply.send_message(FitRes {
                    client: st.id,
                    round,
                    status,
                });
            }
        }
        Ok(())
    }
}
