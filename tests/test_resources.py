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


def test_pool_from_ray_nodes_counts_alive_nodes_only():
    nodes = [
        {"Alive": True, "Resources": {"CPU": 1.0}},
        {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}},
        {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 1.0, "GPU": 1.0}},
    ]
    p = inference_plan(nodes)
    # one actor per declared GPU of the alive nodes; half of each GPU node's CPU stays for the data tasks
    assert (p.size, p.num_gpus, p.num_cpus, p.threads) == (2, 1, 0.5, 1)


def test_cpu_actors_fit_on_one_node():
    # three nodes of 1 CPU: the cluster's total (3) would plan 2-CPU actors no node can host
    p = inference_plan([{"CPU": 1.0}] * 3)
    assert (p.size, p.num_cpus, p.threads) == (3, 0.5, 1)
    p = inference_plan([{"CPU": 2.0}, {"CPU": 2.0}])
    assert (p.size, p.num_cpus, p.threads) == (2, 1, 2)
    assert inference_plan([{"CPU": 16.0}] * 2).size == 14


def test_train_worker_fits_on_the_largest_node():
    res, threads = train_worker_resources([{"CPU": 1.0}] * 4, workers=1, use_gpu=False)
    assert res == {"CPU": 1.0} and threads == 1  # not 3 CPUs: no node has them
