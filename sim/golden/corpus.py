"""A small corpus of English sentences written for spattn's tests and evaluation.

* :data:`PARAPHRASES`: pairs that say the same thing in different words; the retrieval check asks
  whether each sentence's nearest neighbour among all of them stays the same under pruning.
* :data:`PASSAGES`: longer texts, from a few dozen to about 250 tokens, so that sequence lengths
  span the ``minilm`` preset's ``max_tokens``.
* :data:`CALIBRATION`: sentences used only to calibrate ViTCoD's static masks, never evaluated.

The tests and benches index into these. ``spattn eval`` uses two other sets, stored as package
data in ``data/`` and read with :func:`load_eval_set`: ``calibration``, on which operating points
and static masks are chosen, and ``test``, on which every reported figure is measured. Each holds
sentences, passages of 60 to 250 tokens and retrieval groups: a query, its paraphrase and hard
negatives that share many of its words but not its meaning.
"""

import json
from dataclasses import dataclass
from importlib import resources

__all__ = ["PARAPHRASES", "PASSAGES", "CALIBRATION", "paraphrase_sentences", "eval_sentences",
           "EVAL_SETS", "RetrievalGroup", "EvalSet", "load_eval_set"]

PARAPHRASES = (
    ("A man is playing a guitar on the street.", "Someone is strumming a guitar outside on the sidewalk."),
    ("The cat is sleeping on the warm windowsill.", "A cat naps in the sun by the window."),
    ("The train to Boston was delayed by an hour.", "Our Boston train arrived sixty minutes late."),
    ("She forgot her umbrella and got soaked in the rain.",
     "Without her umbrella, she was drenched by the downpour."),
    ("The company reported record profits this quarter.",
     "This quarter the firm earned more money than ever before."),
    ("Please turn off the lights when you leave the room.",
     "Switch the lights off on your way out of the room, please."),
    ("The children built a sandcastle at the beach.", "Kids made a castle out of sand by the sea."),
    ("He is learning to cook Italian food.", "He has started taking lessons in Italian cooking."),
    ("The museum is closed on Mondays.", "You cannot visit the museum on a Monday."),
    ("Heavy snow blocked the mountain road overnight.",
     "During the night the pass was buried under deep snow."),
    ("The doctor told him to drink more water.", "His physician advised him to stay better hydrated."),
    ("Our team won the championship after a tense final.",
     "After a nerve-racking final match, we took the title."),
    ("The new phone has a much better camera.", "The camera on the latest phone is a big improvement."),
    ("The library extended its opening hours for exams.",
     "During exam season the library stays open later."),
    ("A small boat sailed across the calm lake at sunset.",
     "As the sun went down, a little boat drifted over the still lake."),
    ("The recipe calls for two cups of flour and three eggs.",
     "You need three eggs and two cups of flour for this recipe."),
    ("Scientists discovered a new species of frog in the rainforest.",
     "A previously unknown frog was found by researchers in the jungle."),
    ("The meeting has been moved to Thursday afternoon.",
     "We rescheduled the meeting for Thursday after lunch."),
    ("My laptop battery dies after only two hours.", "The battery in my notebook lasts just two hours."),
    ("The river flooded the fields after days of rain.",
     "After several rainy days the river overflowed onto the farmland."),
)

PASSAGES = (
    "The committee postponed its decision on the new budget until the next meeting, citing the need "
    "for more detailed cost estimates from each department.",
    "When the power went out across the neighbourhood, people lit candles, checked on their elderly "
    "neighbours and gathered on the front steps to talk, and for one evening the street felt more like "
    "a village than a suburb.",
    "Attention mechanisms let a model weigh every word of a sentence against every other word. The "
    "cost grows with the square of the sentence length, which is why accelerators try to skip the "
    "words and heads that matter least, fetch fewer bits from memory, and recompute only when the "
    "cheap answer looks uncertain.",
    "The old lighthouse keeper climbed the spiral stairs every evening for forty years. He trimmed the "
    "wick, polished the great lens until it shone, and wrote the weather in a leather logbook: wind "
    "from the south-west, a heavy swell, three fishing boats returning late. When the light was "
    "finally automated, he kept climbing the stairs anyway, because, as he told the young engineers "
    "who came to install the new equipment, a lighthouse should never be left alone with the sea.",
    "Farmers in the valley have started planting cover crops between the rows of their orchards. The "
    "clover and rye hold the soil in place during winter storms, feed the bees in early spring and "
    "return nitrogen to the ground when they are mown. At first many growers were sceptical, worried "
    "that the extra plants would compete with the trees for water. After three seasons, however, the "
    "orchards with cover crops needed less irrigation, not more, because the living mulch kept the "
    "ground cool and slowed evaporation. The regional cooperative now lends seed drills to any member "
    "who wants to try the method, and the local school has begun to measure the soil moisture in "
    "test plots as part of its science lessons. Researchers from the university visit twice a year to "
    "collect samples, count earthworms and compare yields with the orchards that are still kept bare.",
    "The city council met on Tuesday night to discuss the future of the old railway yard, a large and "
    "mostly empty site between the river and the historic centre. Developers had proposed a mix of "
    "apartments, offices and a shopping arcade, while a coalition of residents asked for a park, a "
    "public swimming pool and a covered market. Several speakers reminded the council that the "
    "ground is contaminated with oil and heavy metals from a century of locomotive repairs, and that "
    "any plan would first require an expensive clean-up. The planning officer presented three "
    "options, each with estimates of cost, housing units and green space, and explained how the "
    "tram line could be extended to serve the site. After four hours of debate, in which tempers "
    "flared more than once, the council voted to commission an independent study of the soil, to "
    "hold two more public workshops in the spring, and to postpone any decision on the developers' "
    "proposal until the study is complete. Residents left the chamber cautiously optimistic, "
    "although many of them said they had heard similar promises before and would believe them only "
    "when the fences finally came down and the first trees were planted along the riverbank.",
)

CALIBRATION = (
    "The bakery on the corner sells fresh bread every morning.",
    "Volunteers cleaned the park and planted twenty new trees.",
    "The pilot announced that the flight would land early because of strong tailwinds.",
    "A sudden storm forced the hikers to turn back before they reached the summit.",
    "The software update fixed several bugs but made the application slower on older computers.",
    "My grandmother keeps a notebook of recipes that she learned from her own mother, and every "
    "page is stained with flour and butter.",
    "The orchestra rehearsed the symphony for weeks, yet the conductor still asked for one more run "
    "through the difficult second movement before the opening night.",
    "Engineers inspected the bridge after the earthquake and found only minor cracks in the concrete.",
    "Every summer the small island hosts a music festival that lasts for a week. Musicians arrive by "
    "ferry with their instruments wrapped in blankets, and the islanders open their homes to them, "
    "because there is only one hotel and it has just twelve rooms. Concerts take place in the church, "
    "in the old fish market and, when the weather is kind, on the rocks above the harbour, where the "
    "audience sits on cushions and the sound of the waves mixes with the violins. The festival began "
    "forty years ago when a retired cellist invited a few friends to play for the fishermen, and it has "
    "grown slowly ever since, without sponsors, advertising or tickets: anyone who comes is asked only "
    "to bring something to share for the long dinner on the last night. Some visitors return every "
    "year; others come once and talk about it for the rest of their lives. The organisers say they "
    "have no plans to make it bigger, since the island could not feed or house more people, and since "
    "the whole point, as the cellist used to say, is that everyone can hear every note.",
)


def paraphrase_sentences():
    """The paraphrase pairs flattened: sentence ``2i`` and ``2i + 1`` are a pair."""
    return tuple(s for pair in PARAPHRASES for s in pair)


def eval_sentences():
    """Every evaluated sentence: the paraphrase set first, then the passages."""
    return paraphrase_sentences() + PASSAGES


#: The evaluation sets shipped in ``data/`` (``<name>.json``).
EVAL_SETS = ("calibration", "test")


@dataclass(frozen=True)
class RetrievalGroup:
    """A query, the sentence that means the same, and sentences that share its words but not its meaning."""
    query: str
    paraphrase: str
    negatives: tuple

    @property
    def candidates(self) -> tuple:
        """The paraphrase first, then the negatives."""
        return (self.paraphrase,) + self.negatives


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set; :attr:`texts` orders all its texts: sentences, passages, then per
    retrieval group the query, the paraphrase and the negatives."""
    name: str
    sentences: tuple
    passages: tuple
    retrieval: tuple  # of RetrievalGroup

    @property
    def texts(self) -> tuple:
        groups = tuple(t for g in self.retrieval for t in (g.query,) + g.candidates)
        return self.sentences + self.passages + groups

    def retrieval_positions(self):
        """Positions in :attr:`texts` of the queries, of all candidates (every group's), and, per
        query, the index into the candidates of its paraphrase."""
        queries, candidates, answers = [], [], []
        position = len(self.sentences) + len(self.passages)
        for group in self.retrieval:
            queries.append(position)
            answers.append(len(candidates))
            candidates += range(position + 1, position + 1 + len(group.candidates))
            position += 1 + len(group.candidates)
        return queries, candidates, answers

    def subset(self, sentences: int, passages: int, groups: int) -> "EvalSet":
        """The first ``sentences`` sentences, ``passages`` passages and ``groups`` retrieval groups."""
        return EvalSet(self.name, self.sentences[:sentences], self.passages[:passages],
                       self.retrieval[:groups])


def load_eval_set(name: str) -> EvalSet:
    """The evaluation set ``name`` (one of :data:`EVAL_SETS`) from the package's ``data/<name>.json``."""
    if name not in EVAL_SETS:
        raise ValueError(f"evaluation set must be one of {', '.join(EVAL_SETS)}, not {name!r}")
    data = json.loads((resources.files(__package__) / "data" / f"{name}.json").read_text())
    groups = tuple(RetrievalGroup(g["query"], g["paraphrase"], tuple(g["negatives"]))
                   for g in data["retrieval"])
    return EvalSet(name, tuple(data["sentences"]), tuple(data["passages"]), groups)
