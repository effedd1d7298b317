from mdistill.resources import inference_plan, train_worker_resources


def test_two_cpus_one_actor_leaves_room_for_read_tasks():
    p = inference_plan({"CPU": 2.0})
    assert (p.size, p.num_cpus, p.num_gpus, p.threads) == (1, 1, 0, 2)


def test_one_actor_per_gpu():
    p = inference_plan({"CPU": 32.0, "GPU": 4.0})
    assert (p.size, p.num_gpus) == (4, 1)
    assert inference_plan({"CPU": 32.0, "GPU": 4.0}, max_actors=2).size == 2


def test_many_cpus_two_threads_per_actor():
    p = inference_plan({"CPU": 16.0})
    assert p.size == 7 and p.num_cpus == 2


def test_train_workers_never_hold_every_cpu():
    res, threads = train_worker_resources({"CPU": 2.0}, workers=2, use_gpu=False)
    assert res == {"CPU": 0.5} and threads == 1
    res, _ = train_worker_resources({"CPU": 16.0}, workers=2, use_gpu=False)
    assert res["CPU"] * 2 < 16
    assert train_worker_resources({"CPU": 8.0, "GPU": 2.0}, workers=2, use_gpu=True)[0] == {"CPU": 1, "GPU": 1}


def test_concurrent_trainers_share_the_cpus_and_leave_room_for_data():
    res, threads = train_worker_resources({"CPU": 2.0}, workers=2, use_gpu=False, concurrent=2)
    assert res == {"CPU": 0.25} and threads == 1
    res, _ = train_worker_resources({"CPU": 2.0}, workers=1, use_gpu=False, concurrent=2)
    assert res["CPU"] * 2 <= 1
