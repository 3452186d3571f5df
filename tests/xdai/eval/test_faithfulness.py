"""The faithfulness measure on fixed strings: the replies that invented facts in the new-user trial count as
unsupported or contradicting; grounded replies and everyday phrasing do not."""

import pytest

from xdai.eval.faithfulness import check_reply, cn_to_int, find_claims, summarise

EILEEN_GU = "谷爱凌是谁？ — 谷爱凌是中国自由式滑雪运动员，2022年北京冬奥会获得两枚金牌和一枚银牌。"
PACK_HOURS = "本馆每天早上七点开门，晚上九点关门，每周一休息。"
PARKING = "酒店有停车场吗？ — 酒店有地下停车场，共200个车位，住客免费。"


@pytest.mark.parametrize("text, value", [("二十三", 23), ("一百", 100), ("两千五百", 2500), ("二〇二二", 2022),
                                         ("十", 10), ("三万", 30000), ("七", 7)])
def test_chinese_numerals_normalise(text, value):
    assert cn_to_int(text) == value


def test_the_eileen_gu_invention_counts_as_unsupported():
    reply = "是啊，我也是自由式滑雪运动员。从2013年8月开始就参加了全国锦标赛，世界冠军了！"
    verdict = check_reply(reply, [EILEEN_GU], ["谷爱凌好厉害呀"])
    assert not verdict.faithful
    assert {"2013年", "8月"} <= {c.text for c in verdict.unsupported}


def test_the_opening_hours_invention_contradicts_the_pack():
    verdict = check_reply("周一开，上午八点开门。", [PACK_HOURS], ["你们几点开门？周一开吗？"])
    assert [x.claim.text for x in verdict.contradictions] == ["八点"]
    assert "开门" in verdict.contradictions[0].shared
    assert "七点" in verdict.contradictions[0].stated


def test_the_helipad_invention_contradicts_the_parking_fact():
    verdict = check_reply("有，直升机停机坪共一百个车位", [PARKING], ["你们酒店有直升机停机坪吗？"])
    assert not verdict.faithful
    assert [c.text for c in verdict.unsupported] == ["一百个"]
    assert verdict.contradictions and verdict.contradictions[0].claim.value == "100"


def test_an_invented_manager_name_is_an_unsupported_entity():
    verdict = check_reply("我们的总经理叫王建国。", ["酒店前台24小时服务。"], ["酒店总经理叫什么名字？"])
    assert [c.text for c in verdict.unsupported] == ["王建国"]


def test_a_grounded_reply_is_faithful_even_with_other_digits_written_out():
    reply = "对呀，她在2022年北京冬奥会拿了两枚金牌呢！"
    verdict = check_reply(reply, [EILEEN_GU], ["谷爱凌好厉害呀"])
    assert verdict.faithful, verdict.to_dict()
    assert len(verdict.claims) >= 3  # 2022年, 两枚, 北京


def test_the_right_hours_are_supported_whatever_the_numeral_script():
    verdict = check_reply("我们早上7点开门，周一休息。", [PACK_HOURS], [])
    assert verdict.faithful, verdict.to_dict()


def test_everyday_phrasing_is_not_a_claim():
    assert find_claims("我们一起去吧，等一下，这是其中之一，一个好地方。") == []


def test_english_names_and_numbers():
    verdict = check_reply("I'm the Monkey King. I fought Erlang Shen for 81 days.",
                          ["Sun Wukong, the Monkey King, travelled west with Tang Sanzang."], ["Who are you?"])
    unsupported = {c.text for c in verdict.unsupported}
    assert "Erlang Shen" in unsupported and "81 days" in unsupported
    assert "Monkey King" not in unsupported


def test_contradictions_need_the_same_kind_and_the_same_thing():
    # a price never contradicts a time, and a number about something else is not a contradiction
    verdict = check_reply("门票60元。", ["故宫每天早上八点半开门，门票60元。"], [])
    assert verdict.faithful
    verdict = check_reply("我每天八点起床。", [PACK_HOURS], [])
    assert not verdict.contradictions and [c.text for c in verdict.unsupported] == ["八点"]


def test_summary_counts_per_reply_and_share():
    good = check_reply("门票60元。", ["门票60元。"], [])
    bad = check_reply("门票80元，开放3小时。", ["门票60元。"], [])
    s = summarise([good, bad])
    assert s["replies"] == 2 and s["share_unfaithful"] == 0.5 and s["unsupported_per_reply"] == 1.0
    assert s["contradictions_per_reply"] == 0.5


def test_a_number_taken_from_the_knowledge_is_no_contradiction_of_its_neighbours():
    # two injected items share words (分钟, 步行) but state different durations: the reply that copies one is faithful
    knowledge = ["从杭州东站坐地铁一号线到龙翔桥站，C口出来步行五分钟即到；打车大约二十五分钟。",
                 "云栖酒店在湖滨路二十八号，离西湖湖滨步行十分钟。"]
    verdict = check_reply("坐地铁一号线到龙翔桥站，C口出来步行五分钟就到了。", knowledge, ["从东站怎么过来？"])
    assert verdict.faithful, verdict.to_dict()
    # ...but a number the knowledge does not state for it still contradicts
    assert check_reply("步行二十分钟就到。", knowledge, []).contradictions


def test_dictionary_words_jieba_tags_as_names_are_not_people():
    assert find_claims("能干这么快的滑雪真是太棒了！") == []  # 滑雪, 太棒了: "nr" in jieba's dictionary
    assert [c.text for c in find_claims("我们的总经理叫王建国。")] == ["王建国"]
    assert [c.text for c in find_claims("老孙的金箍棒")] == ["老孙"]
