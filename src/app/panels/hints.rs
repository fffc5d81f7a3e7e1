//! Plain explanations shown on hover for every control named by a symbol or a term of the
//! trade (tau, S_T, LoRA rank, ...): a new user reads what a setting does without the paper.
//! One place, so a control shown in two panels explains itself the same way in both.

/// Query panel: the ranking's settings.
pub const TAU: &str = "Temperature of the title softmax: lower trusts the model's top title \
    more, higher spreads the score over more of the generated titles.";
pub const DELTA: &str = "Temperature of the self-assessment score: lower lets the model's own \
    verdict (can this passage answer the question?) decide more. Matters only with \
    self-assessment on.";
pub const PASSAGE_WEIGHT: &str = "How much it counts how readily the model wrote a passage, when \
    ranking the passages under one title. 0 is the paper's formula.";
pub const QUERY_WEIGHT: &str = "How much it counts how probable the model finds the question \
    after reading each passage (the query likelihood). 0 leaves it out.";
pub const TITLE_BEAMS: &str = "How many titles the model writes for a question. At least as many \
    as the corpus has titles scores every title (nothing is pruned); fewer is faster on a large \
    corpus but can miss a title whose first word is unlikely. The candidate budget then reads the \
    likeliest.";
pub const PASSAGE_BEAMS: &str = "How many passages the model writes under each title. More find \
    more candidates, and take longer.";

pub const PASSAGE_BEAM_SEARCH: &str = "Search a title's passages as a full beam search scored \
    by sequence log-probability, instead of one passage per first token. Reaches passages that \
    share their first words, in titles with many passages (an encyclopedia article, say: with one \
    title beam and 40 passage beams it found the gold passage for 0.917 of 24 SQuAD dev \
    questions, against 0.375 with three titles of 10).";
pub const WHY_NOT: &str = "Scores the passage typed beside it for the current question, as if \
    the model had found it: its title's log-probability and place among the title beams, its \
    tokens forced through the trie, P(reject), and the rank it would get.";
pub const SIDE_BY_SIDE: &str = "Shows the lexical baseline BM25's top ten for the same question \
    next to the model's top ten, marking the passages both found.";

/// Query panel: the score table's columns.
pub const SCORE_COLUMNS: [&str; 12] = [
    "Final rank, by the score S",
    "Passage id (click to open it in the Corpus panel)",
    "The passage's title",
    "How likely the model finds this title for the question (a log-probability: closer to 0 is likelier)",
    "How likely the model finds this passage under its title (a log-probability, over the passages the trie allowed)",
    "The model's own verdict: the probability that this passage cannot answer the question",
    "Query likelihood: how probable the question is after the model reads the passage (mean log-probability per token)",
    "Title score: the share of the model's belief that goes to this passage's title among the generated titles (tau sets how sharp)",
    "Passage term: how readily the model wrote this passage compared with the others under its title (passage weight sets how much it counts)",
    "Self-assessment term: how sure the model is that this passage answers, compared with the others under its title (delta sets how sharp)",
    "Query-likelihood term: how well this passage explains the question compared with all candidates (query weight sets how much it counts)",
    "Final score that orders the ranking: the title score, the passage terms and the query likelihood combined",
];

/// Train panel.
pub const PRESET: &str = "A measured recipe: fills every training setting below for the corpus \
    size and the model. Any field can still be changed afterwards.";
pub const BUDGET: &str = "How long to train: a number of steps (weight updates), or of epochs \
    (passes over all training examples; the steps follow from it).";
pub const TASK_MIX: &str = "How often each training task is practised, relative to the others. \
    With epochs, a weight of 2 sees that task's examples twice per epoch.";
pub const MIX_INDEXING: &str = "Indexing: the model learns to write a passage's title and text \
    from one of its sentences (it memorises the corpus).";
pub const MIX_RETRIEVAL: &str = "Retrieval: the model learns to write the right passage for a \
    question.";
pub const MIX_ASSESSMENT: &str = "Self-assessment: the model learns to say whether a passage can \
    answer a question.";
pub const MIX_READING: &str = "Reading: the model learns which questions people ask of a passage \
    (passage -> question). The query likelihood, which ranks the candidates, is then read by \
    the trained model instead of the base model.";
pub const SENTENCES_PER_PASSAGE: &str = "From how many of each passage's sentences the model \
    practises recalling the passage (0: every sentence of 6 to 49 words, every epoch).";
pub const PSEUDO_PER_PASSAGE: &str = "Before training, the base model writes this many questions \
    for every passage; those from which BM25 finds the passage train retrieval beside the query \
    file (0: none).";
pub const TARGET_WORDS: &str = "How many words of the passage the model learns to write after the \
    title when indexing (0: all of it). Short targets train faster; the trie completes the rest.";
pub const LORA: &str = "Train small adapter matrices instead of every weight: less memory and \
    faster, and the base model stays as it was.";
pub const LORA_RANK: &str = "Size of the small adapter matrices trained while the base model \
    stays frozen: higher can learn more, and trains slower with more memory.";
pub const LEARNING_RATE: &str = "How far each step moves the weights: too high and training \
    diverges, too low and it learns slowly.";
pub const BATCH_TOKENS: &str = "How much text one training step reads, in tokens (rows times the \
    longest row). Larger steps are smoother, and slower with more memory.";
pub const KEEP_TOP: &str = "A written question is kept when retrieval ranks its passage within \
    this many results.";
pub const CANDIDATE_BUDGET: &str = "How many passages the model reads per question at most. Every \
    passage of each title beam is a candidate, titles in order of likelihood while their \
    passages fit (the most likely title always): a corpus of one-passage titles reads as many \
    titles as the budget, one of long articles a few. More finds the gold passage more often \
    and takes longer: the model reads each candidate for the query likelihood, the first time \
    in full and later only the question (the session keeps what it read, see the timings \
    line). 0: the paper's passage beams per title instead.";
pub const PASSAGE_BEAMS_UNUSED: &str = "Used when the candidate budget is 0 (the paper's search): \
    with a budget, every passage of each title read is a candidate.";

pub const RETRIEVER_TITLES: &str = "The model retrieves by writing a passage's title and then its text, each constrained by a token trie, and ranks the candidates by its own scores (Self-Retrieval).";
pub const RETRIEVER_DOCIDS: &str = "The model retrieves by writing a hierarchical docid (a path down a k-means tree of the passages) through extra retrieval heads, an MLP and a docid head added to every layer. Without LoRA only those new parts train and the base model stays as it is; the tiny model trains whole.";

pub const DOCID_STAGE1: &str = "Stage 1, the warm-up: the retrieval pathway learns questions and passage sentences -> docids; on a pretrained model the base stays frozen unless LoRA is on.";
pub const DOCID_STAGE2: &str = "Stage 2 goes on from a finished stage-1 run (its model, tree and pathway) into the run directory above, with LoRA on the base. Besides stage 1's examples it trains mode 2: for each training question the pathway draws its best docids, those whose passage holds the answer are rewarded (trained as its docids), and the answer is trained on every drawn passage (\"can answer\" + the answer, or \"cannot answer\"). The assessment weight of the task mix balances mode 2's answers.";

pub const TITLE_PRIOR: &str = "How much of each title's prior comes off its score before the \
    candidate budget picks titles (applies to the next question). The prior is how readily the \
    model writes the title after an empty question: a title it writes whatever is asked is \
    discounted, and one the question itself makes likely (a rare name) moves up. 0: the plain \
    beam order.";
pub const ANSWER_PASSAGES: &str = "How many of the top passages the base model reads the answer \
    from (applies to the next question); it copies the answer from one of them and cites that \
    one. A run that trained answers reads the top passage alone.";
