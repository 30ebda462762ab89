//! The built-in corpus: synthetic short stories, generated deterministically from a seed by a
//! small probabilistic grammar, so that a run needs no file and no network.
//!
//! The text is English-like with structure a small model can learn beyond unigram statistics:
//! a fixed cast of named characters who keep their gender (he/she, his/her agree with the
//! name), job, home and pet across stories; places and objects that recur; short paragraphs;
//! dialogue lines in double quotes with "said NAME"; a plot of want, search, help, find and
//! thanks; "The end." to close. It is synthetic: perplexities on it say nothing about natural
//! text. Stories are documents (the data path puts an end-of-text token between them).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The default size of the corpus in bytes.
pub const DEFAULT_BYTES: usize = 3_500_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum G {
    He,
    She,
}

struct Person {
    name: &'static str,
    g: G,
    job: &'static str,
    home: usize,
    pet: &'static str,
}

const fn p(name: &'static str, g: G, job: &'static str, home: usize, pet: &'static str) -> Person {
    Person {
        name,
        g,
        job,
        home,
        pet,
    }
}

const CAST: [Person; 24] = [
    p("Mia", G::She, "baker", 0, "cat"),
    p("Tom", G::He, "fisherman", 1, "dog"),
    p("Lily", G::She, "teacher", 2, "bird"),
    p("Ben", G::He, "farmer", 3, "goat"),
    p("Anna", G::She, "doctor", 4, "rabbit"),
    p("Sam", G::He, "painter", 5, "cat"),
    p("Rosa", G::She, "gardener", 6, "dog"),
    p("Jack", G::He, "sailor", 1, "parrot"),
    p("Ella", G::She, "singer", 7, "bird"),
    p("Leo", G::He, "builder", 8, "dog"),
    p("Nora", G::She, "farmer", 3, "horse"),
    p("Max", G::He, "baker", 0, "mouse"),
    p("Ivy", G::She, "sailor", 1, "cat"),
    p("Finn", G::He, "teacher", 2, "frog"),
    p("Zoe", G::She, "painter", 5, "fox"),
    p("Omar", G::He, "doctor", 4, "cat"),
    p("Ruby", G::She, "builder", 8, "goat"),
    p("Hugo", G::He, "gardener", 6, "rabbit"),
    p("Maya", G::She, "fisherman", 9, "duck"),
    p("Paul", G::He, "singer", 7, "dog"),
    p("Clara", G::She, "miller", 10, "mouse"),
    p("Otto", G::He, "miller", 10, "owl"),
    p("Lucy", G::She, "librarian", 11, "cat"),
    p("Eli", G::He, "librarian", 11, "turtle"),
];

/// (name, where something can be inside it)
const PLACES: [(&str, &str); 12] = [
    ("the bakery", "behind the big oven"),
    ("the harbour", "under an old net"),
    ("the school", "in a dusty box"),
    ("the farm", "in the hay"),
    ("the little hospital", "under a white bed"),
    ("the yellow house", "behind a painting"),
    ("the garden", "under the apple tree"),
    ("the town hall", "on the high stage"),
    ("the new bridge", "between two stones"),
    ("the lake", "in the tall reeds"),
    ("the old mill", "next to the wheel"),
    ("the library", "between two blue books"),
];

/// (a ..., the ...)
const THINGS: [(&str, &str); 14] = [
    ("a small key", "key"),
    ("a red kite", "kite"),
    ("a silver ring", "ring"),
    ("an old map", "map"),
    ("a warm hat", "hat"),
    ("a blue ball", "ball"),
    ("a wooden box", "box"),
    ("a green umbrella", "umbrella"),
    ("a tiny bell", "bell"),
    ("a book of songs", "book"),
    ("a pair of boots", "boots"),
    ("a jar of honey", "honey"),
    ("a brass lamp", "lamp"),
    ("a letter from the king", "letter"),
];

const TIMES: [&str; 8] = [
    "One morning",
    "One rainy day",
    "Late in the evening",
    "On a cold winter day",
    "One sunny afternoon",
    "Early on Sunday",
    "In the spring",
    "On the first day of summer",
];

const FEEL_BAD: [&str; 4] = ["sad", "worried", "upset", "afraid"];
const FEEL_GOOD: [&str; 4] = ["happy", "glad", "very happy", "proud"];
const WEATHER: [&str; 5] = [
    "The sun was shining.",
    "It was raining a little.",
    "The wind was strong.",
    "Snow covered the roofs.",
    "The sky was grey.",
];

struct Rng(ChaCha8Rng);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn subj(g: G) -> &'static str {
    if g == G::He {
        "he"
    } else {
        "she"
    }
}
fn subj_cap(g: G) -> &'static str {
    if g == G::He {
        "He"
    } else {
        "She"
    }
}
fn poss(g: G) -> &'static str {
    if g == G::He {
        "his"
    } else {
        "her"
    }
}
fn obj(g: G) -> &'static str {
    if g == G::He {
        "him"
    } else {
        "her"
    }
}

/// Who and what one story is about, drawn before any of it is written.
struct Plot {
    /// The one who lost something, and the friend who helps.
    pa: &'static Person,
    pb: &'static Person,
    /// "a red ball", "red ball".
    thing: &'static str,
    the_thing: &'static str,
    home: &'static str,
    /// Where they search, and the spot there where it turns up.
    splace: &'static str,
    spot: &'static str,
    bad: &'static str,
    good: &'static str,
}

impl Plot {
    fn draw(r: &mut Rng) -> Plot {
        let a = r.below(CAST.len());
        let mut b = r.below(CAST.len());
        if b == a {
            b = (b + 1) % CAST.len();
        }
        let (pa, pb) = (&CAST[a], &CAST[b]);
        let (thing, the_thing) = *r.pick(&THINGS);
        let home = PLACES[pa.home].0;
        let mut search = r.below(PLACES.len());
        if search == pa.home {
            search = (search + 1) % PLACES.len();
        }
        let (splace, spot) = PLACES[search];
        let bad = *r.pick(&FEEL_BAD);
        let good = *r.pick(&FEEL_GOOD);
        Plot {
            pa,
            pb,
            thing,
            the_thing,
            home,
            splace,
            spot,
            bad,
            good,
        }
    }
}

/// One story (no trailing newline): title, opening, meeting, search, ending, each drawing
/// from `r` in turn.
fn story(r: &mut Rng, out: &mut String) {
    let plot = Plot::draw(r);
    title(r, &plot, out);
    opening(r, &plot, out);
    meeting(r, &plot, out);
    search(r, &plot, out);
    ending(r, &plot, out);
}

fn title(r: &mut Rng, p: &Plot, out: &mut String) {
    let (an, bn) = (p.pa.name, p.pb.name);
    let title = match r.below(3) {
        0 => format!("{an} and the Lost {}", capitalize(p.the_thing)),
        1 => format!("The {} of {an} the {}", capitalize(p.the_thing), p.pa.job),
        _ => format!("{an} and {bn}"),
    };
    out.push_str(&title);
    out.push_str("\n\n");
}

fn opening(r: &mut Rng, p: &Plot, out: &mut String) {
    let (an, ga) = (p.pa.name, p.pa.g);
    let (home, thing, the_thing, bad) = (p.home, p.thing, p.the_thing, p.bad);
    out.push_str(&format!(
        "{} {an} the {} was at {home}. {} ",
        r.pick(&TIMES),
        p.pa.job,
        r.pick(&WEATHER)
    ));
    match r.below(3) {
        0 => out.push_str(&format!(
            "{} looked for {} {the_thing}, but it was gone. {} was {bad}.",
            subj_cap(ga),
            poss(ga),
            subj_cap(ga)
        )),
        1 => out.push_str(&format!(
            "{an} had lost {thing}. {} {the_thing} was not in {} pocket, and {} felt {bad}.",
            capitalize(poss(ga)),
            poss(ga),
            subj(ga)
        )),
        _ => out.push_str(&format!(
            "{an} wanted {thing} for {} {}. But {} did not know where to find one.",
            poss(ga),
            p.pa.pet,
            subj(ga)
        )),
    }
    if r.chance(50) {
        out.push_str(&format!(
            " {} {} sat by the door and looked at {}.",
            capitalize(poss(ga)),
            p.pa.pet,
            obj(ga)
        ));
    }
    out.push_str("\n\n");
}

/// The friend arrives, and the dialogue.
fn meeting(r: &mut Rng, p: &Plot, out: &mut String) {
    let (an, bn, gb) = (p.pa.name, p.pb.name, p.pb.g);
    let (thing, the_thing, splace, bad) = (p.thing, p.the_thing, p.splace, p.bad);
    out.push_str(&format!(
        "Then {bn} the {} came by with {} {}. {} saw that {an} was {bad}.\n\n",
        p.pb.job,
        poss(gb),
        p.pb.pet,
        subj_cap(gb)
    ));
    let greet = *r.pick(&["Hello", "Good morning", "Hi"]);
    out.push_str(&format!(
        "\"{greet}, {an},\" said {bn}. \"Why are you {bad}?\"\n\n"
    ));
    out.push_str(&format!(
        "\"I cannot find {} {the_thing},\" said {an}. \"Can you help me?\"\n\n",
        if r.chance(50) { "my" } else { "the" }
    ));
    match r.below(3) {
        0 => out.push_str(&format!(
            "\"Yes, I can help you,\" said {bn}. \"I saw {thing} at {splace} this morning.\"\n\n"
        )),
        1 => out.push_str(&format!(
            "{bn} thought for a moment. \"Let us look at {splace},\" {} said.\n\n",
            subj(gb)
        )),
        _ => out.push_str(&format!(
            "\"Of course,\" said {bn}. \"My {} is good at finding things. We will go to {splace}.\"\n\n",
            p.pb.pet
        )),
    }
}

fn search(r: &mut Rng, p: &Plot, out: &mut String) {
    let (an, ga, bn, gb) = (p.pa.name, p.pa.g, p.pb.name, p.pb.g);
    let (the_thing, splace, spot) = (p.the_thing, p.splace, p.spot);
    out.push_str(&format!("So {an} and {bn} walked to {splace} together. "));
    let steps = 1 + r.below(3);
    for _ in 0..steps {
        let (_, wrong) = *r.pick(&PLACES);
        if wrong == spot {
            continue;
        }
        let who = if r.chance(50) { (an, ga) } else { (bn, gb) };
        out.push_str(&format!(
            "{} looked {wrong}, but the {the_thing} was not there. ",
            who.0
        ));
        if r.chance(30) {
            out.push_str(&format!("{} sighed. ", subj_cap(who.1)));
        }
    }
    let finder = if r.chance(50) { (an, ga) } else { (bn, gb) };
    out.push_str(&format!(
        "At last {} looked {spot}, and there it was!\n\n",
        finder.0
    ));
    if finder.0 == bn {
        out.push_str(&format!(
            "\"Here is your {the_thing},\" said {bn}, and {} gave it to {an}.\n\n",
            subj(gb)
        ));
    } else {
        out.push_str(&format!(
            "\"I found it!\" said {an}. {} held up the {the_thing}.\n\n",
            subj_cap(ga)
        ));
    }
}

fn ending(r: &mut Rng, p: &Plot, out: &mut String) {
    let (an, ga, bn, gb) = (p.pa.name, p.pa.g, p.pb.name, p.pb.g);
    let (home, the_thing, good) = (p.home, p.the_thing, p.good);
    out.push_str(&format!(
        "\"Thank you, {bn},\" said {an}. \"You are a good friend.\" {} was {good} again.",
        subj_cap(ga)
    ));
    match r.below(3) {
        0 => out.push_str(&format!(
            " That evening {an} and {bn} ate bread and soup at {home}."
        )),
        1 => out.push_str(&format!(
            " {bn} smiled, and {} {} jumped up and down.",
            poss(gb),
            p.pb.pet
        )),
        _ => out.push_str(&format!(
            " From that day on, {an} always kept {} {the_thing} in a safe place.",
            poss(ga)
        )),
    }
    out.push_str("\n\nThe end.");
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Stories from `seed` until their text (without separators) reaches `bytes` bytes.
pub fn stories(seed: u64, bytes: usize) -> Vec<String> {
    let mut r = Rng(ChaCha8Rng::seed_from_u64(seed));
    let mut out = Vec::new();
    let mut total = 0;
    while total < bytes {
        let mut s = String::with_capacity(1200);
        story(&mut r, &mut s);
        total += s.len();
        out.push(s);
    }
    out
}

/// The corpus as one text: the stories of `stories(seed, bytes)` separated by blank lines.
pub fn generate(seed: u64, bytes: usize) -> String {
    stories(seed, bytes).join("\n\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn deterministic_and_sized() {
        let a = generate(1, 100_000);
        assert_eq!(a, generate(1, 100_000));
        assert_ne!(a, generate(2, 100_000));
        assert!(a.len() >= 100_000 && a.len() < 103_000, "{}", a.len());
        assert!(a.contains("\"Thank you, "));
    }

    /// An order-3 byte model (add-one smoothing) fit on the first 90% is far better on the
    /// last 10% than the unigram model: there is structure to learn.
    #[test]
    fn learnable_beyond_unigrams() {
        let text = generate(0, 400_000);
        let b = text.as_bytes();
        let split = b.len() * 9 / 10;
        let (train, val) = (&b[..split], &b[split..]);
        let mut uni = [1f64; 256];
        let mut ctx: HashMap<[u8; 3], [u32; 256]> = HashMap::new();
        for i in 0..train.len() {
            uni[train[i] as usize] += 1.0;
            if i >= 3 {
                ctx.entry([train[i - 3], train[i - 2], train[i - 1]])
                    .or_insert([0; 256])[train[i] as usize] += 1;
            }
        }
        let tot: f64 = uni.iter().sum();
        let (mut nll_u, mut nll_c) = (0f64, 0f64);
        for i in 3..val.len() {
            let x = val[i] as usize;
            nll_u -= (uni[x] / tot).ln();
            let p = match ctx.get(&[val[i - 3], val[i - 2], val[i - 1]]) {
                Some(c) => {
                    let n: u32 = c.iter().sum();
                    (c[x] as f64 + 0.01) / (n as f64 + 2.56)
                }
                None => uni[x] / tot,
            };
            nll_c -= p.ln();
        }
        let n = (val.len() - 3) as f64;
        let (ppl_u, ppl_c) = ((nll_u / n).exp(), (nll_c / n).exp());
        eprintln!("built-in corpus, bytes: unigram ppl {ppl_u:.2}, order-3 ppl {ppl_c:.2}");
        assert!(
            ppl_c < ppl_u / 4.0,
            "unigram {ppl_u:.2}, order-3 {ppl_c:.2}"
        );
    }
}
