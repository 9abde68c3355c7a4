"""A fixed, varied sentence set for measuring int8 drift against fp32: catalogue titles,
product descriptions, search queries (short and long, typos included), and Chinese text
(the source design is Chinese). Written for StreamRec; not taken from any dataset."""

from __future__ import annotations

TITLES = [
    "Alien (1979)",
    "Toy Story (1995) Animation Children's Comedy",
    "The Shawshank Redemption",
    "Wireless noise-cancelling over-ear headphones, black",
    "Organic green tea, 100 bags",
    "Stainless steel chef's knife 20 cm",
    "Kids' waterproof hiking boots",
    "USB-C to HDMI adapter 4K 60Hz",
    "Le Fabuleux Destin d'Amélie Poulain",
    "Harry Potter and the Philosopher's Stone (paperback)",
    "Espresso machine with milk frother",
    "Yoga mat, non-slip, 6 mm",
]

DESCRIPTIONS = [
    "A lightweight trail running shoe with a breathable mesh upper, a cushioned midsole for "
    "long distances and a grippy rubber outsole that holds on wet rock and loose gravel.",
    "This cast-iron skillet comes pre-seasoned and is ready to use on gas, electric, induction "
    "or an open campfire. It keeps heat evenly, so steaks sear and cornbread browns.",
    "An epic science-fiction film in which a crew of explorers travels through a wormhole near "
    "Saturn in search of a new home for humanity, while time runs differently for each of them.",
    "A romantic comedy about two rival booksellers in Manhattan who fall in love online without "
    "knowing who the other one is.",
    "Compact 12-cup programmable coffee maker with a glass carafe, auto shut-off, pause and "
    "serve, and a reusable filter basket. Dishwasher-safe parts make cleaning easy.",
    "A hardcover cookbook of 120 weeknight recipes built around seasonal vegetables, with "
    "notes on storing leftovers and planning a week of meals.",
    "Smart LED bulb, dimmable, 16 million colours, works with voice assistants, no hub needed; "
    "schedules and scenes are set up in the app in a few minutes.",
    "A gritty crime drama following a detective in 1970s Los Angeles as he unravels a water "
    "conspiracy that reaches the city's most powerful families.",
]

QUERIES = [
    "headphones",
    "cheap running shoes for women",
    "gift for a 10 year old who likes dinosaurs",
    "sci fi movies like interstellar",
    "funny animated movie for kids",
    "coffe machine with grinder",
    "4k monitor 27 inch usb c",
    "black dress",
    "best horror films of the 80s",
    "vegan protein powder chocolate",
    "laptop backpack waterproof 15.6",
    "romantic comedy new york",
]

CHINESE = [
    "无线降噪耳机",
    "适合孩子的动画电影",
    "红茶 茶叶 礼盒装",
    "这款跑鞋轻便透气,适合长距离训练。",
    "科幻电影 星际穿越",
    "不锈钢保温杯 500毫升",
    "我想买一台性价比高的笔记本电脑",
    "夏季女士连衣裙",
]

ALL = TITLES + DESCRIPTIONS + QUERIES + CHINESE
