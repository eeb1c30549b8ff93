"""The paper's prompts must come out character for character: accuracy depends on the wording."""
import pytest

from evaluators import classnames
from evaluators.prompts import clip_prompt, display_name, eval_prompt, train_answer, train_prompt
from serving.errors import EMTError


def test_mnist_prompt_is_the_papers():
    assert eval_prompt("number", classnames.MNIST) == (
        "What is the number in the image? Please only answer a single number in 0, 1, 2, 3, 4, 5, 6, 7, 8, 9."
    )


def test_cifar10_prompt_is_the_papers():
    assert eval_prompt("object", classnames.CIFAR10) == (
        "What is the object in the image? Please only answer a single object in "
        "airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck."
    )


def _labels(prompt: str) -> list[str]:
    head = "Please only answer a single object in "
    assert prompt.endswith(".") and head in prompt
    return prompt[prompt.index(head) + len(head) : -1].split(", ")


def test_cifar100_prompt_lists_all_classes_with_spaces():
    prompt = eval_prompt("object", classnames.CIFAR100)
    labels = _labels(prompt)
    assert len(labels) == 100 and "_" not in prompt
    assert prompt.startswith("What is the object in the image?")
    assert labels[:2] == ["apple", "aquarium fish"] and labels[-1] == "worm"
    assert labels == sorted(labels)  # the label order is already alphabetical


def test_miniimagenet_prompt_sorted_case_insensitively():
    labels = _labels(eval_prompt("object", classnames.MINIIMAGENET, sort=True))
    assert len(set(labels)) == 100 and not any("_" in name for name in labels)
    assert labels[:3] == ["African hunting dog", "aircraft carrier", "ant"]
    assert labels == sorted(labels, key=str.casefold)
    assert "three-toed sloth" in labels and "iPod" in labels


def test_class_lists():
    assert classnames.MNIST == tuple("0123456789")
    assert len(classnames.CIFAR100) == len(set(classnames.CIFAR100)) == 100
    assert classnames.CIFAR100[:8] == ("apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle")
    synsets = [s for s, _ in classnames.MINIIMAGENET_SYNSETS]
    assert synsets[0] == "n01532829" and synsets == sorted(synsets)
    assert classnames.MINIIMAGENET[0] == "house_finch"


def test_display_name():
    assert display_name("aquarium_fish") == "aquarium fish"
    assert display_name("three-toed_sloth") == "three-toed sloth"


@pytest.mark.parametrize(
    ("kind", "name", "answer"),
    [
        ("object", "airplane", "The object is an airplane."),
        ("object", "cat", "The object is a cat."),
        ("object", "aquarium_fish", "The object is an aquarium fish."),
        ("object", "umbrella", "The object is an umbrella."),
        ("object", "African_hunting_dog", "The object is an African hunting dog."),
        ("number", "7", "The number is 7."),
    ],
)
def test_train_answer(kind, name, answer):
    assert train_answer(kind, name) == answer


def test_train_prompt_has_no_label_list():
    assert train_prompt("object") == "What is the object in the image?"
    assert train_prompt("number") == "What is the number in the image?"


def test_clip_prompts():
    assert clip_prompt("number", "7") == 'a photo of the number: "7".'
    assert clip_prompt("object", "cat") == "a photo of a cat."
    assert clip_prompt("object", "maple_tree") == "a photo of a maple tree."


def test_unknown_kind_is_a_fixable_error():
    with pytest.raises(EMTError, match="'number'.*'object'"):
        eval_prompt("digit", classnames.MNIST)
