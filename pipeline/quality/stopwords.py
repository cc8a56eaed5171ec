"""The most frequent function words of each Latin-script language langdetect knows.

langdetect labels any Latin text, including a list of English nouns ("1. Lion 2. Elephant" -> de)
or a chess position (-> sv). Running prose in a language is full of that language's function words;
a list, a table or a name is not. So a Latin-script label other than English is only believed when
enough of the text's words are function words of the language named (langid.confirm_latin).
"""

from __future__ import annotations

_WORDS = {
    "af": "die en van is in het nie wat om te vir op ek dit sy hy met aan was ook as sal kan maar",
    "ca": "de la el i que a en les per es un una amb del els no al com és més però als seu o",
    "cs": "a v se na je že to s z do jako ale by jsou k o pro i jsem tak už jeho ve",
    "cy": "y yr a ac yn i o ar mae ei gan am ond wedi hi fe eu ni roedd bod hyn mewn",
    "da": "og i at er det en til på som med af for ikke der jeg den de har et men var",
    "de": "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine es sie ich wir auch "
          "nach bei aus wie einen einer einem eines war werden hat dass sind wird noch nur kann so wenn man um am "
          "zum zur vom ab an oder aber",
    "es": "el la los las de y que en un una es por con para no se del al lo como más pero sus su le ya muy "
          "mi tu me te nos hay está son ser fue",
    "et": "ja on ei et see ka kui oli mis ta ning aga siis nii ma sa nad või oma",
    "fi": "ja on ei se että oli hän mutta kun niin ovat tai myös kuin mitä joka ole olla minä sinä",
    "fr": "le la les de des et est en un une du que pour dans qui pas il elle sur au avec ce son sont ne se "
          "vous nous je par plus aux ces cette mais ou très été être",
    "hr": "i je u da se na za su od s što kao ali koji iz sam bi biti ili ne to",
    "hu": "a az és hogy nem is egy van meg de ez ki el mint csak már volt vagy",
    "id": "yang dan di ini itu dengan untuk dari tidak ke akan ada pada juga saya dalam bisa atau",
    "it": "il la di e che è un una per in non del della con si le gli alla sono al lo dei da come ma anche",
    "lt": "ir kad yra su į iš ne tai bet jis ji kaip apie buvo o jo ar",
    "lv": "un ir ka ar uz no par kas bet arī tas to vai lai es viņš bija",
    "nl": "de het een en van is in dat op te zijn met voor niet die er ik je ook aan maar",
    "no": "og i det er på en til som at med for av ikke den har jeg et de var men",
    "pl": "i w nie się na z że do to jest jak a o co po ale tak jego dla są",
    "pt": "o a os as de e que do da em um uma é para com não no na se dos das por mais mas ao pela pelo meu "
          "sua seu está são foi",
    "ro": "și de la în a cu nu o pe că din se este un mai care sunt pentru fi",
    "sk": "a v sa na je že to s z do ako ale aj sú by som tak pre",
    "sl": "in je na v da se za so z ki pa s kot tudi po bi ali sem",
    "so": "iyo waa ku ka in oo u ay la uu ee wax ah ayaa si aan waxaa",
    "sq": "dhe të në e i për me një nga që është se ka do si nuk",
    "sv": "och i att det som en på är av för med till den inte har jag de om ett",
    "sw": "na ya wa kwa ni za la katika kama hii huo yake cha vya lakini kuwa",
    "tl": "ang ng sa na mga at ay si ni ko mo ito siya hindi para kung",
    "tr": "ve bir bu da de için ile çok ne gibi daha olarak ama en ben sen o",
    "vi": "và của là có không được các một những cho trong với này người đã",
}
#: Latin-script language -> its function words (lower case).
STOPWORDS: dict[str, frozenset[str]] = {k: frozenset(v.split()) for k, v in _WORDS.items()}
