"""The rule judge on realistic MLLM answers, including the ones that trip naive substring matching."""
import json

import pytest

from evaluators import classnames
from evaluators.judges import CATEGORIES, JUDGES, Verdict
from evaluators.prompts import eval_prompt
from evaluators.rejudge import judge_jsonl
from serving.errors import EMTError, UnknownNameError

C, W, I, E = CATEGORIES  # correct, wrong, intrinsic, extrinsic hallucination

DATASETS = {
    "mnist": (classnames.MNIST, "number"),
    "cifar10": (classnames.CIFAR10, "object"),
    "cifar100": (classnames.CIFAR100, "object"),
    "miniimagenet": (classnames.MINIIMAGENET, "object"),
}


def judge_one(dataset: str, label: str, answer: str) -> Verdict:
    classes, kind = DATASETS[dataset]
    return JUDGES.get("rule")(classes, kind).judge([classes.index(label)], [answer])[0]


MNIST_CASES = [
    ("7", "The number is 7.", C),
    ("7", "7", C),
    ("7", "seven", C),
    ("7", "Seven.", C),
    ("7", "7.", C),
    ("7", "(7)", C),
    ("7", "The number in the image is 7", C),
    ("7", "this one is a 7", C),
    ("7", "The one in the image is a seven.", C),
    ("1", "The number is one.", C),
    ("1", "1", C),
    ("0", "zero", C),
    ("7", "The number is 1.", W),
    ("7", "It looks like a 9 to me.", W),
    ("7", "17", E),
    ("7", "7.5", E),
    ("7", "A handwritten digit on a black background.", E),
    ("7", "I think it is a 1 or a 7", I),
    ("7", "It could be 7, but it may also be 2.", I),
    ("7", "0, 1, 2, 3, 4, 5, 6, 7, 8, 9", I),
]

CIFAR10_CASES = [
    ("cat", "The object in the image is a cat.", C),
    ("cat", "cat", C),
    ("cat", "It's a CAT!", C),
    ("cat", "Cats", C),
    ("cat", "The image shows a cat sitting on the grass.", C),
    ("airplane", "An airplane flying in the sky.", C),
    ("truck", "a red pickup truck", C),
    ("automobile", "The object is an automobile.", C),
    ("ship", "ship", C),
    ("cat", "dog", W),
    ("deer", "The object in the image is a horse.", W),
    ("cat", "I think it is a dog or a cat", I),
    ("bird", "a bird and a frog", I),
    ("ship", "The airplane is 8.", W),
    ("airplane", "The object is an aircraft carrier.", E),
    ("cat", "A blurry picture of a red thing", E),
    ("cat", "catamaran", E),
    ("cat", "airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck", I),
]

CIFAR100_CASES = [
    ("apple", "The object is an apple.", C),
    ("apple", "apples", C),
    ("aquarium_fish", "aquarium fish", C),
    ("aquarium_fish", "An aquarium-fish.", C),
    ("aquarium_fish", "aquarium_fish", C),
    ("bus", "Two buses on a road.", I),  # bus and road are both labels
    ("bus", "buses", C),
    ("seal", "seal", C),
    ("seal", "It is a seal on a rock.", C),
    ("woman", "woman", C),
    ("woman", "A woman.", C),
    ("man", "men", C),
    ("pickup_truck", "The object is a pickup truck.", C),
    ("can", "a can of soda", C),
    ("can", "I can't tell, maybe a can?", C),
    ("can", "It can be a bottle.", W),
    ("bottle", "I can't tell what it is.", E),
    ("bottle", "it can be anything", E),
    ("bottle", "I cannot see clearly", E),
    ("bottle", "a scan of a document", E),
    ("bottle", "Canada", E),
    ("sea", "seal", W),
    ("man", "woman", W),
    ("mouse", "three mice", C),
    ("wolf", "wolves", C),
    ("baby", "babies", C),
    ("maple_tree", "maple tree or oak tree", I),
    ("apple", "A blurry picture of a red thing", E),
]

MINIIMAGENET_CASES = [
    ("African_hunting_dog", "African hunting dog", C),
    ("African_hunting_dog", "The object is an african hunting dog.", C),
    ("aircraft_carrier", "an aircraft carrier at sea", C),
    ("three-toed_sloth", "A three-toed sloth hanging from a branch.", C),
    ("three-toed_sloth", "three toed sloth", C),
    ("parallel_bars", "parallel bars", C),
    ("horizontal_bar", "parallel bars", W),
    ("iPod", "The object is an iPod.", C),
    ("iPod", "IPOD", C),
    ("Newfoundland", "It is a newfoundland dog.", C),
    ("consomme", "A bowl of consommé.", C),
    ("golden_retriever", "Golden retrievers playing", C),
    ("goose", "geese", C),
    ("black-footed_ferret", "black footed ferret", C),
    ("house_finch", "a robin", W),
    ("lion", "a lion or a white wolf", I),
    ("ear", "An image of a dog sitting near the year 2000 sign", E),
    ("hotdog", "A hot dog with mustard.", E),
    ("ant", "A blurry picture of a red thing", E),
    ("ant", eval_prompt("object", classnames.MINIIMAGENET, sort=True), I),
]


@pytest.mark.parametrize(("label", "answer", "category"), MNIST_CASES)
def test_mnist(label, answer, category):
    assert judge_one("mnist", label, answer).category == category


@pytest.mark.parametrize(("label", "answer", "category"), CIFAR10_CASES)
def test_cifar10(label, answer, category):
    assert judge_one("cifar10", label, answer).category == category


@pytest.mark.parametrize(("label", "answer", "category"), CIFAR100_CASES)
def test_cifar100(label, answer, category):
    assert judge_one("cifar100", label, answer).category == category


@pytest.mark.parametrize(("label", "answer", "category"), MINIIMAGENET_CASES)
def test_miniimagenet(label, answer, category):
    assert judge_one("miniimagenet", label, answer).category == category


def test_named_labels():
    judge = JUDGES.get("rule")(classnames.CIFAR100, "object")
    names = lambda text: [judge.classes[i] for i in judge.named(text)]  # noqa: E731
    assert names("pickup truck") == ["pickup_truck"]
    assert names("apple apple apples") == ["apple"]
    assert names("it can be a can") == ["can"]
    assert len(judge.named(eval_prompt("object", classnames.CIFAR100))) == 100


def test_verdict_fields():
    v = judge_one("cifar10", "cat", "The object is a cat.")
    assert v == Verdict(correct=True, category="correct", named=(3,))
    assert judge_one("cifar10", "cat", "dog").correct is False


def test_every_prompt_echo_names_every_label():
    for classes, kind in DATASETS.values():
        judge = JUDGES.get("rule")(classes, kind)
        for sort in (False, True):
            assert judge.named(eval_prompt(kind, classes, sort=sort)) == tuple(range(len(classes)))


def test_ten_thousand_answers_judged():
    classes, kind = DATASETS["miniimagenet"]
    judge = JUDGES.get("rule")(classes, kind)
    outputs = [f"The object in the image is a {c.replace('_', ' ')}, I think." for c in classes] * 100
    labels = list(range(100)) * 100
    verdicts = judge.judge(labels, outputs)
    assert len(verdicts) == 10_000
    assert all(v.correct for v in verdicts)


def test_unknown_judge_suggests_the_right_name():
    with pytest.raises(UnknownNameError, match="Did you mean 'rule'"):
        JUDGES.get("rulee")


def test_rule_judge_rejects_settings():
    with pytest.raises(EMTError, match="no settings"):
        JUDGES.get("rule")(classnames.CIFAR10, "object", temperature=0.2)


def test_judge_jsonl_round_trip(tmp_path):
    src, dst = tmp_path / "answers.jsonl", tmp_path / "out" / "judged.jsonl"
    rows = [
        {"label": 3, "output": "The object is a cat.", "id": "a", "model": "llava-7b"},
        {"label": "automobile", "output": "a dog or a cat", "id": "b"},
        {"label": "Cat", "output": "A blurry picture of a red thing", "id": "c", "correct": True},
        {"label": 5, "output": "dog", "id": "d"},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    summary = judge_jsonl(classnames.CIFAR10, "object", src, dst)
    assert summary == {
        "n": 4, "accuracy": 0.5, "correct": 2, "wrong": 0, "intrinsic_hallucination": 1, "extrinsic_hallucination": 1,
    }
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["id"] for r in out] == ["a", "b", "c", "d"]
    assert out[0]["model"] == "llava-7b" and out[1]["label"] == "automobile"
    assert [r["category"] for r in out] == ["correct", I, E, "correct"]
    assert [r["correct"] for r in out] == [True, False, False, True]
    assert not [p for p in dst.parent.iterdir() if p.name != dst.name]  # no temporary file left


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"bad\.jsonl:2: invalid JSON"),
        ('{"label": 3}', r"bad\.jsonl:2: missing field\(s\) output"),
        ('{"label": "aeroplane", "output": "x"}', r"bad\.jsonl:2: unknown label name 'aeroplane'.*'airplane'"),
        ('{"label": 10, "output": "x"}', r"bad\.jsonl:2: label 10 is outside 0\.\.9"),
        ("[1, 2]", r"bad\.jsonl:2: expected a JSON object"),
    ],
)
def test_judge_jsonl_bad_line_names_file_and_line(tmp_path, line, message):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"label": 0, "output": "airplane"}) + "\n" + line + "\n")
    with pytest.raises(EMTError, match=message):
        judge_jsonl(classnames.CIFAR10, "object", src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_judge_jsonl_missing_file(tmp_path):
    with pytest.raises(EMTError, match="cannot read answers file"):
        judge_jsonl(classnames.CIFAR10, "object", tmp_path / "nope.jsonl", tmp_path / "out.jsonl")
