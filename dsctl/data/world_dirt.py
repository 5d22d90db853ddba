"""The deliberate dirt of the default world: what a web crawl is full of.

Every generator takes an `random.Random` and returns text, so the world is a pure
function of its seed. The non-English passages are composed offline from small
sentence grammars (subject, verb, object, place) embedded below; they read like
simple real sentences, which is all a language identifier needs.
"""

from __future__ import annotations

import random

from dsctl.data.minhash import jaccard, shingle_set

_BOILERPLATE_LINES = (
    "Home | About Us | Contact | Blog | Careers",
    "Skip to main content",
    "We use cookies to improve your experience on our website.",
    "By continuing to browse the site you agree to our Cookie Policy.",
    "Accept all cookies",
    "Manage cookie preferences",
    "Subscribe to our newsletter",
    "Enter your email address to subscribe",
    "Sign up for free updates and exclusive offers!",
    "Follow us on Facebook, Twitter and Instagram",
    "Share this article",
    "Privacy Policy | Terms of Use | Sitemap",
    "Please enable JavaScript to view this page.",
    "Read more...",
    "Loading...",
    "Back to top",
    "Powered by WordPress",
    "Log in | Register | Forgot your password?",
    "This site is protected by reCAPTCHA.",
    "Advertisement",
    "Related posts",
)
_COMPANIES = (
    "Example Media", "Northwind Press", "Acme Publishing", "Globex News", "Initech Online", "Umbrella Digital",
)


def boilerplate(rng: random.Random) -> str:
    """Menus, cookie banners and footers with no content between them."""
    lines = rng.sample(_BOILERPLATE_LINES, rng.randint(8, 14))
    year = rng.randint(2005, 2025)
    lines.append(f"© {year} {rng.choice(_COMPANIES)}. All rights reserved.")
    return "\n".join(lines)


_SYMBOLS = "#$%&*@!?~^|<>{}[]=+_/\\;:"


def junk(rng: random.Random) -> str:
    """Symbol soup, keyboard mash or number dumps: text-shaped bytes with no language."""
    style = rng.randrange(3)
    words = []
    for _ in range(rng.randint(30, 120)):
        if style == 0:
            words.append("".join(rng.choice(_SYMBOLS) for _ in range(rng.randint(1, 6))))
        elif style == 1:
            words.append("".join(rng.choice("qwxzjkvbpdfghlmn0123456789#$") for _ in range(rng.randint(2, 9))))
        else:
            words.append(rng.choice(
                ("###", ">>>", "...", "0x" + format(rng.getrandbits(16), "04x"), str(rng.randint(0, 99999)))))
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return "\n".join(lines)


_SHORT = ("Click here.", "Thanks!", "See above.", "Page not found", "Untitled", "More info", "ok", "N/A", "Next page")


def short(rng: random.Random, prose: str) -> str:
    """A stub: a stock phrase or the first few words of a real sentence."""
    if rng.random() < 0.5:
        return rng.choice(_SHORT)
    return " ".join(prose.split()[: rng.randint(2, 8)])


# language -> (subjects, verbs, objects, endings). Each sentence is
# subject + verb + object + ending, so a few dozen phrases give thousands of sentences.
_GRAMMARS: dict[str, tuple[tuple[str, ...], ...]] = {
    "fr": (
        ("Le chat", "Ma grand-mère", "Le professeur", "Notre voisin", "La petite fille", "Le maire de la ville"),
        ("mange", "regarde", "achète", "prépare", "cherche", "raconte"),
        ("une pomme rouge", "le journal du matin", "un gâteau au chocolat",
         "une longue histoire", "les fleurs du jardin"),
        ("dans la cuisine.", "avant le dîner.", "avec ses amis.",
         "tous les dimanches.", "près de la rivière.", "sans dire un mot."),
    ),
    "de": (
        ("Der Hund", "Meine Schwester", "Der alte Lehrer", "Unser Nachbar", "Das kleine Kind", "Die Bürgermeisterin"),
        ("liest", "kauft", "sucht", "kocht", "malt", "erzählt"),
        ("ein spannendes Buch", "die Zeitung von heute", "einen warmen Kuchen",
         "eine lange Geschichte", "die Blumen im Garten"),
        ("in der Küche.", "nach der Arbeit.", "mit seinen Freunden.",
         "jeden Sonntag.", "am Ufer des Flusses.", "ohne ein Wort zu sagen."),
    ),
    "es": (
        ("El perro", "Mi hermana", "El viejo maestro", "Nuestro vecino", "La niña pequeña", "La alcaldesa"),
        ("come", "compra", "busca", "prepara", "pinta", "cuenta"),
        ("una manzana roja", "el periódico de hoy", "un pastel de chocolate",
         "una historia muy larga", "las flores del jardín"),
        ("en la cocina.", "después del trabajo.", "con sus amigos.",
         "todos los domingos.", "cerca del río.", "sin decir nada."),
    ),
    "it": (
        ("Il gatto", "Mia nonna", "Il vecchio maestro", "Il nostro vicino", "La bambina", "Il sindaco della città"),
        ("mangia", "guarda", "compra", "prepara", "cerca", "racconta"),
        ("una mela rossa", "il giornale del mattino", "una torta al cioccolato",
         "una lunga storia", "i fiori del giardino"),
        ("in cucina.", "prima di cena.", "con i suoi amici.",
         "ogni domenica.", "vicino al fiume.", "senza dire una parola."),
    ),
    "pt": (
        ("O cachorro", "Minha avó", "O velho professor", "O nosso vizinho", "A menina", "O prefeito da cidade"),
        ("come", "olha", "compra", "prepara", "procura", "conta"),
        ("uma maçã vermelha", "o jornal da manhã", "um bolo de chocolate",
         "uma história muito longa", "as flores do jardim"),
        ("na cozinha.", "antes do jantar.", "com os seus amigos.",
         "todos os domingos.", "perto do rio.", "sem dizer uma palavra."),
    ),
    "nl": (
        ("De hond", "Mijn zus", "De oude leraar", "Onze buurman", "Het kleine meisje", "De burgemeester"),
        ("leest", "koopt", "zoekt", "kookt", "schildert", "vertelt"),
        ("een spannend boek", "de krant van vandaag", "een warme taart", "een lang verhaal", "de bloemen in de tuin"),
        ("in de keuken.", "na het werk.", "met zijn vrienden.",
         "elke zondag.", "bij de rivier.", "zonder iets te zeggen."),
    ),
}
LANGUAGES = tuple(sorted(_GRAMMARS))


def non_english(rng: random.Random) -> tuple[str, str]:
    """(language code, a passage of 5-10 sentences in it)."""
    lang = rng.choice(LANGUAGES)
    sentences = [" ".join(rng.choice(part) for part in _GRAMMARS[lang]) for _ in range(rng.randint(5, 10))]
    return lang, " ".join(sentences)


_FILLERS = ("also", "often", "simply", "then", "usually", "really", "new", "other", "same", "whole")


def near_duplicate(rng: random.Random, text: str, low: float = 0.7, high: float = 0.95) -> tuple[str, float] | None:
    """`text` with a few words replaced, dropped or inserted until its true word-5-gram
    Jaccard similarity to the original falls into [low, high]; None if the document is
    too short to land there (one edit already overshoots). The similarity is measured
    with dedup's shingling (`minhash.shingle_set`, `minhash.jaccard`)."""
    original = shingle_set(text)
    target = rng.uniform(low + 0.05, high)
    tokens = text.split(" ")
    for _ in range(len(tokens)):
        i = rng.randrange(len(tokens))
        edit = rng.randrange(3)
        if edit == 0:
            tokens[i] = rng.choice(_FILLERS)
        elif edit == 1 and len(tokens) > 10:
            del tokens[i]
        else:
            tokens.insert(i, rng.choice(_FILLERS))
        candidate = " ".join(tokens)
        similarity = jaccard(original, shingle_set(candidate))
        if similarity <= target:
            return (candidate, similarity) if similarity >= low else None
    return None
