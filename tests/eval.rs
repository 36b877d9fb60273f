//! Evaluation: the PubMedQA loader, answer parsing, and log-likelihood scoring on SmolLM2.

use fedsim::eval::pubmedqa::{self, Answer, Item};
use fedsim::eval::{argmax, Evaluator};

#[test]
fn answers_are_parsed_as_whole_words_and_ties_go_to_the_first() {
    assert_eq!(pubmedqa::parse_answer("Yes, it does."), Some(Answer::Yes));
    assert_eq!(
        pubmedqa::parse_answer("The answer is: NO"),
        Some(Answer::No)
    );
    assert_eq!(pubmedqa::parse_answer("Maybe. Yes."), Some(Answer::Maybe));
    assert_eq!(pubmedqa::parse_answer("Nobody knows; yesterday"), None);
    assert_eq!(argmax(&[-1.0, -0.5, -0.5]), 1);
}

#[test]
fn log_likelihood_scoring_picks_the_answer_a_constructed_abstract_states() {
    let (model, tokenizer, header) = crate::smollm2::loaded();
    let ev = Evaluator {
        model,
        tokenizer,
        template: fedsim::tokenizer::chat_template(header).unwrap_or_default(),
        answer_tokens: 8,
    };
    let item = |answer, text: &str| Item {
        pmid: "0".into(),
        question: "Does smoking increase the risk of lung cancer?".into(),
        contexts: vec![text.into()],
        answer,
    };
    let yes = item(
        Answer::Yes,
        "In this cohort, smoking strongly increased the risk of lung cancer. Yes, smoking increases the risk.",
    );
    let scored = ev.score(&yes).unwrap();
    assert_eq!(scored.by_likelihood, Answer::Yes, "{scored:?}");
    assert!(scored.logprobs.iter().all(|l| l.is_finite() && *l < 0.0));
    let no = Item {
        question: "Is the moon made of cheese?".into(),
        ..item(
            Answer::No,
            "The moon is made of rock, not cheese. No, the moon is not made of cheese.",
        )
    };
    let scored = ev.score(&no).unwrap();
    assert_eq!(scored.by_likelihood, Answer::No, "{scored:?}");
}

#[test]
fn a_stop_ends_pubmedqa_scoring_with_the_items_scored() {
    let (model, tokenizer, header) = crate::smollm2::loaded();
    let ev = Evaluator {
        model,
        tokenizer,
        template: fedsim::tokenizer::chat_template(header).unwrap_or_default(),
        answer_tokens: 4,
    };
    let item = |answer| Item {
        pmid: "0".into(),
        question: "Does smoking increase the risk of lung cancer?".into(),
        contexts: vec!["Smoking increased the risk.".into()],
        answer,
    };
    let items = [item(Answer::Yes), item(Answer::No), item(Answer::No)];
    let mut calls = 0;
    let r = ev
        .pubmedqa(&items, &mut |done, total| {
            calls += 1;
            assert_eq!(total, 3);
            if done == 1 {
                Err(fedsim::data::Stopped)
            } else {
                Ok(())
            }
        })
        .unwrap();
    assert_eq!((calls, r.items, r.planned, r.scored.len()), (1, 1, 3, 1));
    // The baseline is over the items scored: one item, its answer is the majority.
    assert_eq!(r.majority_baseline, 1.0);
}
