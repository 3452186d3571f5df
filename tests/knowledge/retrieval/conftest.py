"""A tiny hand-written travel KB, as items made from triples the way sources make them (KdConv shape)."""

from __future__ import annotations

import pytest

from knowledge.item import Item

TRIPLES = {
    "故宫": [
        ("Information", "故宫又称紫禁城，是明、清两代的皇宫，是中国保存最完整的木质结构古建筑群。"),
        ("门票", "旺季60元，淡季40元。"),
        ("开放时间", "8:30-17:00，周一闭馆。"),
        ("地址", "北京市东城区景山前街4号"),
        ("周边景点", "天坛、南锣鼓巷"),
    ],
    "天坛": [
        ("Information", "天坛是明清两代皇帝祭天、祈谷的场所，祈年殿是它的标志。"),
        ("门票", "旺季15元，淡季10元。"),
        ("地址", "北京市东城区天坛路甲1号"),
    ],
    "北京大学": [
        ("Information", "北京大学创办于1898年，校园里有未名湖和博雅塔。"),
        ("地址", "北京市海淀区颐和园路5号"),
        ("门票", "免费，需预约。"),
    ],
    "颐和园": [
        ("Information", "颐和园是清代皇家园林，以昆明湖和万寿山为基址。"),
        ("门票", "旺季30元，淡季20元。"),
    ],
    "鸟巢（国家体育场）": [
        ("Information", "鸟巢是2008年北京奥运会的主体育场。"),
        ("门票", "50元"),
    ],
}


def kb_items() -> list[Item]:
    items = []
    for entity, triples in TRIPLES.items():
        for n, (predicate, obj) in enumerate(triples, 1):
            record = f"entity {entity} triple {n}"
            if predicate == "Information":
                items.append(Item(id=f"{entity}-d", kind="description", text=obj, title=entity, entity=entity,
                                  predicate=predicate, tags=["travel"], source_file="kb.json", source_record=record))
            else:
                q = f"{entity}的{predicate}是什么？"
                items.append(Item(id=f"{entity}-{predicate}", kind="qa", text=f"{q}\n{obj}", q=q, a=obj,
                                  entity=entity, predicate=predicate, tags=["travel", predicate],
                                  source_file="kb.json", source_record=record))
    return items


@pytest.fixture
def items() -> list[Item]:
    return kb_items()
