"""A small hand-written bilingual medical knowledge table (facts only) for the synthetic testbed.

Each condition: English and Chinese names, three characteristic symptoms, the test that
confirms it, a first-line treatment and the department that manages it. The tiny base model
learns the words from a corpus that pairs them at random; each specialist learns the facts
from exam questions in its own language (see synthetic.py).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Condition:
    en: str
    zh: str
    symptoms_en: tuple[str, str, str]
    symptoms_zh: tuple[str, str, str]
    test_en: str
    test_zh: str
    treatment_en: str
    treatment_zh: str
    department_en: str
    department_zh: str

    def name(self, lang: str) -> str:
        return self.en if lang == "en" else self.zh

    def symptoms(self, lang: str) -> tuple[str, str, str]:
        return self.symptoms_en if lang == "en" else self.symptoms_zh

    def attribute(self, kind: str, lang: str) -> str:
        return getattr(self, f"{kind}_{lang}")


def _c(en, zh, sen, szh, test, treatment, dept) -> Condition:
    return Condition(en, zh, tuple(sen), tuple(szh), *test, *treatment, *dept)


RESP = ("respiratory medicine", "呼吸内科")
CARD = ("cardiology", "心内科")
ENDO = ("endocrinology", "内分泌科")
GAST = ("gastroenterology", "消化内科")
SURG = ("general surgery", "普外科")
INFE = ("infectious diseases", "感染科")
HEMA = ("hematology", "血液科")
URO = ("urology", "泌尿外科")
NEPH = ("nephrology", "肾内科")
NEUR = ("neurology", "神经内科")
RHEU = ("rheumatology", "风湿免疫科")
ORTH = ("orthopedics", "骨科")
DERM = ("dermatology", "皮肤科")
ENT = ("otolaryngology", "耳鼻喉科")
OPHT = ("ophthalmology", "眼科")
PSY = ("psychiatry", "精神科")

CONDITIONS: tuple[Condition, ...] = (
    _c("community-acquired pneumonia", "社区获得性肺炎",
       ["fever", "productive cough", "pleuritic chest pain"], ["发热", "咳痰", "胸膜性胸痛"],
       ("chest X-ray", "胸部X线"), ("azithromycin", "阿奇霉素"), RESP),
    _c("asthma", "支气管哮喘",
       ["wheezing", "episodic breathlessness", "night-time cough"], ["喘息", "发作性呼吸困难", "夜间咳嗽"],
       ("spirometry with bronchodilator test", "支气管舒张试验"), ("inhaled corticosteroids", "吸入性糖皮质激素"), RESP),
    _c("chronic obstructive pulmonary disease", "慢性阻塞性肺疾病",
       ["chronic cough", "breathlessness on exertion", "barrel chest"], ["慢性咳嗽", "活动后气促", "桶状胸"],
       ("spirometry", "肺功能检查"), ("inhaled bronchodilators", "吸入支气管扩张剂"), RESP),
    _c("pulmonary tuberculosis", "肺结核",
       ["night sweats", "coughing up blood", "weight loss"], ["盗汗", "咯血", "体重下降"],
       ("sputum acid-fast smear", "痰抗酸染色"), ("isoniazid with rifampicin", "异烟肼联合利福平"), INFE),
    _c("acute myocardial infarction", "急性心肌梗死",
       ["crushing chest pain", "cold sweats", "pain spreading to the left arm"], ["压榨性胸痛", "大汗淋漓", "左臂放射痛"],
       ("cardiac troponin", "心肌肌钙蛋白"), ("percutaneous coronary intervention", "经皮冠状动脉介入治疗"), CARD),
    _c("heart failure", "心力衰竭",
       ["leg swelling", "breathlessness lying flat", "fatigue"], ["下肢水肿", "端坐呼吸", "乏力"],
       ("echocardiography", "超声心动图"), ("furosemide", "呋塞米"), CARD),
    _c("atrial fibrillation", "心房颤动",
       ["palpitations", "irregular pulse", "dizziness"], ["心悸", "脉搏不齐", "头晕"],
       ("electrocardiogram", "心电图"), ("warfarin", "华法林"), CARD),
    _c("hypertension", "高血压",
       ["occipital headache", "nosebleeds", "ringing in the ears"], ["枕部头痛", "鼻出血", "耳鸣"],
       ("repeated blood pressure measurement", "多次血压测量"), ("amlodipine", "氨氯地平"), CARD),
    _c("type 2 diabetes", "2型糖尿病",
       ["frequent urination", "excessive thirst", "blurred vision"], ["多尿", "口渴多饮", "视物模糊"],
       ("HbA1c", "糖化血红蛋白"), ("metformin", "二甲双胍"), ENDO),
    _c("hyperthyroidism", "甲状腺功能亢进症",
       ["heat intolerance", "hand tremor", "weight loss despite a good appetite"], ["怕热多汗", "手抖", "多食消瘦"],
       ("thyroid function tests", "甲状腺功能检查"), ("methimazole", "甲巯咪唑"), ENDO),
    _c("hypothyroidism", "甲状腺功能减退症",
       ["cold intolerance", "weight gain", "constipation"], ["怕冷", "体重增加", "便秘"],
       ("serum TSH", "血清促甲状腺激素"), ("levothyroxine", "左甲状腺素"), ENDO),
    _c("peptic ulcer disease", "消化性溃疡",
       ["epigastric pain", "pain eased by eating", "black stools"], ["上腹痛", "进食后缓解", "黑便"],
       ("gastroscopy", "胃镜检查"), ("Helicobacter pylori eradication therapy", "幽门螺杆菌根除治疗"), GAST),
    _c("gastro-oesophageal reflux disease", "胃食管反流病",
       ["heartburn", "acid regurgitation", "hoarse voice"], ["烧心", "反酸", "声音嘶哑"],
       ("24-hour oesophageal pH monitoring", "24小时食管pH监测"), ("omeprazole", "奥美拉唑"), GAST),
    _c("acute appendicitis", "急性阑尾炎",
       ["pain moving from the navel to the right lower abdomen", "nausea", "low-grade fever"],
       ["转移性右下腹痛", "恶心", "低热"],
       ("abdominal CT", "腹部CT"), ("appendectomy", "阑尾切除术"), SURG),
    _c("acute pancreatitis", "急性胰腺炎",
       ["upper abdominal pain spreading to the back", "vomiting", "abdominal distension"],
       ["上腹痛向背部放射", "呕吐", "腹胀"],
       ("serum amylase", "血淀粉酶"), ("fasting with intravenous fluids", "禁食补液"), GAST),
    _c("acute cholecystitis", "急性胆囊炎",
       ["right upper abdominal pain", "fever with chills", "positive Murphy sign"], ["右上腹痛", "寒战发热", "墨菲征阳性"],
       ("abdominal ultrasound", "腹部超声"), ("cholecystectomy", "胆囊切除术"), SURG),
    _c("chronic hepatitis B", "慢性乙型肝炎",
       ["yellowing of the skin", "tiredness", "poor appetite"], ["皮肤黄染", "疲倦", "食欲减退"],
       ("hepatitis B surface antigen", "乙肝表面抗原"), ("entecavir", "恩替卡韦"), INFE),
    _c("iron deficiency anaemia", "缺铁性贫血",
       ["pale skin", "brittle nails", "craving for ice"], ["面色苍白", "指甲易碎", "异食癖"],
       ("serum ferritin", "血清铁蛋白"), ("oral iron", "口服铁剂"), HEMA),
    _c("acute cystitis", "急性膀胱炎",
       ["burning on urination", "frequent urination with urgency", "lower abdominal discomfort"],
       ["尿痛", "尿频尿急", "下腹不适"],
       ("urinalysis", "尿常规"), ("nitrofurantoin", "呋喃妥因"), URO),
    _c("kidney stones", "肾结石",
       ["colicky flank pain", "blood in the urine", "pain radiating to the groin"], ["腰部绞痛", "血尿", "疼痛放射至腹股沟"],
       ("urinary tract ultrasound", "泌尿系超声"), ("shock wave lithotripsy", "体外冲击波碎石"), URO),
    _c("benign prostatic hyperplasia", "良性前列腺增生",
       ["weak urinary stream", "hesitancy", "waking at night to urinate"], ["尿线变细", "排尿踌躇", "夜尿增多"],
       ("prostate ultrasound", "前列腺超声"), ("tamsulosin", "坦索罗辛"), URO),
    _c("chronic kidney disease", "慢性肾脏病",
       ["foamy urine", "puffy eyelids", "reduced urine output"], ["泡沫尿", "眼睑水肿", "尿量减少"],
       ("serum creatinine", "血肌酐"), ("ACE inhibitors", "血管紧张素转换酶抑制剂"), NEPH),
    _c("migraine", "偏头痛",
       ["one-sided throbbing headache", "sensitivity to light", "visual aura"], ["单侧搏动性头痛", "畏光", "视觉先兆"],
       ("head MRI", "头颅MRI"), ("sumatriptan", "舒马曲坦"), NEUR),
    _c("ischaemic stroke", "缺血性脑卒中",
       ["sudden one-sided weakness", "facial droop", "slurred speech"], ["突发偏瘫", "口角歪斜", "言语不清"],
       ("head CT", "头颅CT"), ("alteplase thrombolysis", "阿替普酶溶栓"), NEUR),
    _c("epilepsy", "癫痫",
       ["recurrent seizures", "loss of consciousness", "tongue biting"], ["反复抽搐", "意识丧失", "舌咬伤"],
       ("electroencephalogram", "脑电图"), ("sodium valproate", "丙戊酸钠"), NEUR),
    _c("Parkinson's disease", "帕金森病",
       ["resting tremor", "muscle rigidity", "slowness of movement"], ["静止性震颤", "肌强直", "运动迟缓"],
       ("dopamine transporter imaging", "多巴胺转运体显像"), ("levodopa", "左旋多巴"), NEUR),
    _c("rheumatoid arthritis", "类风湿关节炎",
       ["symmetric swelling of small joints", "morning stiffness", "hand deformity"], ["对称性小关节肿痛", "晨僵", "手部畸形"],
       ("rheumatoid factor", "类风湿因子"), ("methotrexate", "甲氨蝶呤"), RHEU),
    _c("gout", "痛风",
       ["sudden big-toe pain", "red swollen joint", "attacks at night"], ["第一跖趾关节剧痛", "关节红肿", "夜间发作"],
       ("serum uric acid", "血尿酸"), ("colchicine", "秋水仙碱"), RHEU),
    _c("systemic lupus erythematosus", "系统性红斑狼疮",
       ["butterfly rash", "joint pain", "sun sensitivity"], ["蝶形红斑", "关节痛", "光过敏"],
       ("antinuclear antibodies", "抗核抗体"), ("hydroxychloroquine", "羟氯喹"), RHEU),
    _c("knee osteoarthritis", "膝骨关节炎",
       ["knee pain when walking", "grating in the joint", "stiffness after rest"], ["行走时膝痛", "关节摩擦音", "休息后僵硬"],
       ("knee X-ray", "膝关节X线"), ("non-steroidal anti-inflammatory drugs", "非甾体抗炎药"), ORTH),
    _c("osteoporosis", "骨质疏松症",
       ["back pain", "loss of height", "fracture after a minor fall"], ["腰背痛", "身高变矮", "轻微跌倒后骨折"],
       ("bone density scan", "骨密度检查"), ("alendronate", "阿仑膦酸钠"), ORTH),
    _c("atopic dermatitis", "特应性皮炎",
       ["itchy skin", "dry skin", "rash in the elbow creases"], ["皮肤瘙痒", "皮肤干燥", "肘窝皮疹"],
       ("serum IgE", "血清IgE"), ("topical corticosteroids", "外用糖皮质激素"), DERM),
    _c("psoriasis", "银屑病",
       ["silvery scaly plaques", "pitted nails", "plaques on elbows and knees"], ["银白色鳞屑斑块", "指甲点状凹陷", "肘膝伸侧皮损"],
       ("skin biopsy", "皮肤活检"), ("calcipotriol", "卡泊三醇"), DERM),
    _c("herpes zoster", "带状疱疹",
       ["band of painful blisters", "burning pain", "rash on one side of the body"], ["带状簇集水疱", "烧灼样疼痛", "单侧分布皮疹"],
       ("viral PCR of blister fluid", "疱液病毒PCR"), ("valaciclovir", "伐昔洛韦"), DERM),
    _c("influenza", "流行性感冒",
       ["high fever", "muscle aches", "sore throat"], ["高热", "肌肉酸痛", "咽痛"],
       ("rapid influenza antigen test", "流感抗原快速检测"), ("oseltamivir", "奥司他韦"), INFE),
    _c("acute otitis media", "急性中耳炎",
       ["ear pain", "muffled hearing", "fever in a child"], ["耳痛", "听力下降", "儿童发热"],
       ("otoscopy", "耳镜检查"), ("amoxicillin", "阿莫西林"), ENT),
    _c("allergic rhinitis", "过敏性鼻炎",
       ["sneezing", "runny nose", "itchy nose"], ["打喷嚏", "流清涕", "鼻痒"],
       ("skin prick test", "皮肤点刺试验"), ("intranasal corticosteroids", "鼻用糖皮质激素"), ENT),
    _c("acute angle-closure glaucoma", "急性闭角型青光眼",
       ["severe eye pain", "halos around lights", "red eye"], ["剧烈眼痛", "虹视", "眼红"],
       ("intraocular pressure measurement", "眼压测量"), ("pilocarpine", "毛果芸香碱"), OPHT),
    _c("cataract", "白内障",
       ["painless gradual loss of vision", "glare at night", "faded colours"], ["无痛性视力下降", "夜间眩光", "色觉减退"],
       ("slit-lamp examination", "裂隙灯检查"), ("cataract surgery", "白内障手术"), OPHT),
    _c("major depression", "抑郁症",
       ["persistent low mood", "loss of interest", "early waking"], ["持续情绪低落", "兴趣减退", "早醒"],
       ("depression rating scale", "抑郁量表评估"), ("sertraline", "舍曲林"), PSY),
    _c("generalised anxiety disorder", "广泛性焦虑障碍",
       ["excessive worry", "restlessness", "muscle tension"], ["过度担忧", "坐立不安", "肌肉紧张"],
       ("anxiety rating scale", "焦虑量表评估"), ("escitalopram", "艾司西酞普兰"), PSY),
)

ATTRIBUTES = ("test", "treatment", "department")
